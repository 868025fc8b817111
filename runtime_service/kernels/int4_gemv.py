"""The int4 tile of kernels/lowbit_gemv.py: no int-to-float conversion and no scale or zero
per weight.

Layout (models/linear.py): packed bytes [N, K/2], channel 2j in the low nibble of byte j;
float32 scales and zeros [N, K/GROUP]. Read as little-endian words of PLANES/2 bytes (int32
for groups of 128), nibble i of word j is channel PLANES*j + i of the group. The kernel keeps
the words packed and treats each nibble position as a "plane": plane i of a group is a
[rows, GROUP/PLANES] operand whose channels are PLANES*j + i, multiplied by the activations
at those same channels (a strided load of x, which stays in L1). Sums over channels do not
care about their order, so no nibble is ever moved to its channel's position.

A nibble becomes a 16-bit float with one OR: 0x4300 | q is the bfloat16 128 + q (0x6400 | q
the float16 1024 + q), exact. The offset and the zero point come out of the product once
per group: sum_k s (q_k - z) x_k = s * (sum_k (M + q_k) x_k - (M + z) * sum_k x_k), where
the dot gives the first sum in float32 and the group's activation sum is taken once per
program. Per weight: a shift, an AND-OR and the tensor-core product; per group and output:
three float32 operations. This equals the dequantize-then-multiply reference up to float32
summation order; that reference rounds each weight to the activation dtype, this kernel does
not (it is the closer of the two to the float32 product).
"""

from __future__ import annotations

import triton
import triton.language as tl

from runtime_service.kernels.splitk import reduce_splits

# (bit pattern, value) of the float that an OR with a nibble offsets, per compute type.
MAGIC = {"bf16": (0x4300, 128.0), "fp16": (0x6400, 1024.0), "fp32": (0, 0.0)}


@triton.jit
def int4_gemv_kernel(
    x_ptr,  # [M, K] activations
    w_ptr,  # [N, K/PLANES] words of PLANES nibbles (the packed bytes, viewed)
    s_ptr,  # [N, K/GROUP] float32 scales
    z_ptr,  # [N, K/GROUP] float32 zeros (integers)
    b_ptr,  # [N] bias or nothing
    y_ptr,  # [M, N]
    part_ptr,  # split-K partials (splitk.py)
    cnt_ptr,  # split-K counters
    M,
    N,
    K: tl.constexpr,
    stride_x,
    stride_w,  # in words
    stride_s,
    stride_y,
    CHUNKS: tl.constexpr,  # loop iterations (of GPI groups) per split
    SPLITS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    COMPUTE: tl.constexpr,
    MAGIC_BITS: tl.constexpr,  # 0: convert the nibble (float32, the interpreter's tests)
    MAGIC_VALUE: tl.constexpr,
    GROUP: tl.constexpr,
    PLANES: tl.constexpr,  # nibbles per word: 2, 4 or 8; GROUP / PLANES >= 16 (a dot's K)
    GPI: tl.constexpr,  # groups per loop iteration (divides K / GROUP)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    WPG: tl.constexpr = GROUP // PLANES  # words per group and row
    j = tl.arange(0, WPG)
    # Scales and zeros do not feed the dot, so Triton's pipeliner would not load them ahead:
    # each iteration loads the next one's [BLOCK_N, GPI] tiles itself.
    gcol = tl.arange(0, GPI)
    first = pid_k * CHUNKS * GPI + gcol
    at = cols[:, None] * stride_s + first[None, :]
    scales_next = tl.load(s_ptr + at, mask=col_ok[:, None], other=0.0)
    zeros_next = tl.load(z_ptr + at, mask=col_ok[:, None], other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for c in range(0, CHUNKS):
        scales_now = scales_next
        offsets_now = zeros_next + MAGIC_VALUE
        ahead = at + (c + 1) * GPI
        more = col_ok[:, None] & (c + 1 < CHUNKS)
        scales_next = tl.load(s_ptr + ahead, mask=more, other=0.0)
        zeros_next = tl.load(z_ptr + ahead, mask=more, other=0.0)
        for gi in tl.static_range(GPI):
            g = (pid_k * CHUNKS + c) * GPI + gi
            words = tl.load(
                w_ptr + cols[:, None] * stride_w + (g * WPG + j)[None, :],
                mask=col_ok[:, None],
                other=0,
            ).to(tl.int32)
            scale = tl.sum(tl.where(gcol[None, :] == gi, scales_now, 0.0), axis=1)
            offset = tl.sum(tl.where(gcol[None, :] == gi, offsets_now, 0.0), axis=1)
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            xs = tl.zeros([BLOCK_M, WPG], dtype=tl.float32)
            for i in tl.static_range(PLANES):
                x = tl.load(
                    x_ptr + rows[:, None] * stride_x + (g * GROUP + j * PLANES + i)[None, :],
                    mask=row_ok[:, None],
                    other=0.0,
                ).to(COMPUTE)
                nibble = (words >> (4 * i)) & 0xF
                if MAGIC_BITS == 0:
                    q = nibble.to(COMPUTE)
                else:
                    q = (nibble | MAGIC_BITS).to(tl.int16).to(COMPUTE, bitcast=True)
                part = tl.dot(x, tl.trans(q), part)
                xs += x.to(tl.float32)
            xsum = tl.sum(xs, axis=1)
            acc += (part - xsum[:, None] * offset[None, :]) * scale[None, :]
    if SPLITS > 1:
        acc, last = reduce_splits(acc, part_ptr, cnt_ptr, rows, cols, M, N, SPLITS)
    else:
        last = True
    if last:
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(
            y_ptr + rows[:, None] * stride_y + cols[None, :],
            acc.to(y_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
        )
