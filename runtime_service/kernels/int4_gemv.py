"""The int4 weight-only GEMV (kernels/lowbit_gemv.py dispatches int4 weights here).

Weights [N, K/2] uint8 (channel 2j in the low nibble, 2j+1 in the high one) with float32
scales and zeros [N, K/GROUP]. One program computes BLOCK_N output channels for up to 16
tokens: each step loads a [BLOCK_N, BLOCK_K/2] byte tile, unpacks both nibbles, applies each
group's zero and scale in registers and feeds one tensor-core dot.

NOTE: a variant that turned nibbles into floats with the fp16/bf16 magic-number trick,
applied scales per group on the accumulator and split K for the narrow layers measured
slower on the H200 (four linears of a Llama-3-8B layer at one token: 127.6 us against this
kernel's 97.5 us; its best tiles 99.9 us; docs/engine_speed.md), so this one stays.
"""

from __future__ import annotations

import triton
import triton.language as tl

# (BLOCK_N, BLOCK_K, warps, stages): from bench/lowbit_gemv.py --sweep on an H200.
CONFIG = (32, 512, 4, 3)


@triton.jit
def int4_gemv_kernel(
    x_ptr,  # [M, K] activations
    w_ptr,  # [N, K/2] uint8
    s_ptr,  # [N, K/GROUP] float32 scales
    z_ptr,  # [N, K/GROUP] float32 zeros
    b_ptr,  # [N] bias or nothing
    y_ptr,  # [M, N]
    M,
    N,
    K: tl.constexpr,
    stride_x,
    stride_w,
    stride_s,
    stride_y,
    HAS_BIAS: tl.constexpr,
    COMPUTE: tl.constexpr,  # the dot's operand type (bf16/fp16 on GPUs; fp32 in tests)
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + rows[:, None] * stride_x + ks[None, :],
            mask=row_ok[:, None] & (ks[None, :] < K),
            other=0.0,
        ).to(COMPUTE)
        half = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(
            w_ptr + cols[:, None] * stride_w + half[None, :],
            mask=col_ok[:, None] & (half[None, :] < K // 2),
            other=0,
        )
        low = (packed & 0x0F).to(COMPUTE)
        high = (packed >> 4).to(COMPUTE)
        q = tl.reshape(tl.join(low, high), (BLOCK_N, BLOCK_K // GROUP, GROUP))
        groups = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
        at = cols[:, None] * stride_s + groups[None, :]
        ok = col_ok[:, None] & (groups[None, :] < K // GROUP)
        scale = tl.load(s_ptr + at, mask=ok, other=0.0).to(COMPUTE)
        zero = tl.load(z_ptr + at, mask=ok, other=0.0).to(COMPUTE)
        w = tl.reshape((q - zero[:, :, None]) * scale[:, :, None], (BLOCK_N, BLOCK_K))
        acc += tl.dot(x, tl.trans(w))
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    tl.store(
        y_ptr + rows[:, None] * stride_y + cols[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )
