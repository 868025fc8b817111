"""Weight-only low-bit products for small batches: y = x @ W^T with W read packed, once.

A decode step of a few requests is bound by reading the weights: dequantizing a whole int8,
int4 or fp8 weight to bf16 before a dense product (what `Linear` does otherwise) reads it
once packed, writes and reads it again dense, and is slower than a bf16 engine. These
kernels load tiles of the packed weight and dequantize them in registers, so each weight
byte crosses the memory bus once per step. They serve M <= MAX_ROWS rows (tokens); larger
batches are compute-bound and take the dense paths (`torch._scaled_mm` for fp8).

Layouts are models/linear.py's: int8 and fp8 weights [N, K] with one float32 scale per
output channel; int4 [N, K/2] bytes (channel 2j low nibble, 2j+1 high) with per-group
scales and zeros [N, K/group] (group >= 16; its kernel is kernels/int4_gemv.py). fp8 engines
quantize activations per token (kernels/fp8.py; for one token inside this kernel, with the
same arithmetic), so the product sees the rounded activations `_scaled_mm` and the CPU see.
Layers with too few output tiles to occupy every SM split their K loop (kernels/splitk.py).
One token (the single-stream decode) skips the MMA tile, whose 16 rows would be 15 of
padding: each thread multiplies its weights by x and sums them in registers (H200, fp8, the
four linears of a Llama-3-8B layer: 69.8 against 80.6 us; bench/lowbit_gemv.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.kernels.int4_gemv import CONFIG as INT4_CONFIG
from runtime_service.kernels.int4_gemv import int4_gemv_kernel
from runtime_service.kernels.splitk import num_splits, reduce_splits, workspace

MAX_ROWS = 16  # tokens per call that these kernels serve; beyond, the dense paths
ONE_ROW_FMA = True  # one token in registers; False: in a 16-row MMA tile (the bench compares)
# (BLOCK_N, BLOCK_K, warps, stages, programs per SM) per weight kind, from
# bench/lowbit_gemv.py --sweep on an H200 (docs/engine_speed.md): the K loop splits when the
# output tiles are fewer than programs-per-SM x SMs (0: never). int4: kernels/int4_gemv.py.
Config = tuple[int, ...]
CONFIGS: dict[str, Config] = {
    "int8": (32, 256, 4, 4, 3),
    "fp8": (32, 512, 4, 3, 3),
}


@triton.jit
def _gemv_kernel(
    x_ptr,  # [M, K] activations (bf16/fp16/fp32, or fp8 with x_scale)
    w_ptr,  # [N, K] int8/fp8
    s_ptr,  # [N] float32 scales
    xs_ptr,  # [M] float32 per-token activation scales (fp8 only)
    b_ptr,  # [N] bias or nothing
    y_ptr,  # [M, N]
    part_ptr,  # split-K partials (splitk.py)
    cnt_ptr,  # split-K counters
    M,
    N,
    K: tl.constexpr,  # one compiled variant per layer width (a model has a few)
    stride_x,
    stride_w,
    stride_y,
    STEPS: tl.constexpr,  # loop iterations (of BLOCK_K channels) per split
    SPLITS: tl.constexpr,
    X_SCALED: tl.constexpr,
    QUANT_X: tl.constexpr,  # fp8 weights, x in 16 bits: quantize x per token here
    X_ROWS: tl.constexpr,  # QUANT_X: rows quantized, 1 (M = 1, broadcast) or BLOCK_M
    HAS_BIAS: tl.constexpr,
    COMPUTE: tl.constexpr,  # the operands' type in the dot (bf16/fp16 on GPUs; fp32 in tests)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    if QUANT_X:  # kernels/fp8.py's per-token scales, computed by every program (x is in L2)
        qrows = tl.arange(0, X_ROWS)  # one row when M is 1: the dot's padding rows skipped
        amax = tl.zeros([X_ROWS, BLOCK_K], dtype=tl.float32)
        for a0 in range(0, K, BLOCK_K):
            ka = a0 + tl.arange(0, BLOCK_K)
            xa = tl.load(
                x_ptr + qrows[:, None] * stride_x + ka[None, :],
                mask=(qrows[:, None] < M) & (ka[None, :] < K),
                other=0.0,
            )
            amax = tl.maximum(amax, tl.abs(xa.to(tl.float32)))
        x_scale = tl.maximum(tl.max(amax, axis=1), 1e-12) / 448.0
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, STEPS * BLOCK_K, BLOCK_K):
        ks = pid_k * STEPS * BLOCK_K + k0 + tl.arange(0, BLOCK_K)
        if QUANT_X:  # the same rounding as kernels/fp8.py's quantize kernel
            xv = tl.load(
                x_ptr + qrows[:, None] * stride_x + ks[None, :],
                mask=(qrows[:, None] < M) & (ks[None, :] < K),
                other=0.0,
            )
            xq = tl.minimum(tl.maximum(xv.to(tl.float32) / x_scale[:, None], -448.0), 448.0)
            x = tl.broadcast_to(xq.to(tl.float8e4nv).to(COMPUTE), [BLOCK_M, BLOCK_K])
        else:
            x = tl.load(
                x_ptr + rows[:, None] * stride_x + ks[None, :],
                mask=row_ok[:, None] & (ks[None, :] < K),
                other=0.0,
            ).to(COMPUTE)
        w = tl.load(
            w_ptr + cols[:, None] * stride_w + ks[None, :],
            mask=col_ok[:, None] & (ks[None, :] < K),
            other=0.0,
        ).to(COMPUTE)
        if BLOCK_M == 1:  # one token: products and row sums in registers, no MMA tile
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32), axis=1)[None, :]
        else:
            acc += tl.dot(x, tl.trans(w))
    if SPLITS > 1:
        acc, last = reduce_splits(acc, part_ptr, cnt_ptr, rows, cols, M, N, SPLITS)
    else:
        last = True
    if last:  # per-output-channel (and per-token) scales commute with the product
        acc = acc * tl.load(s_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if X_SCALED:
            acc = acc * tl.load(xs_ptr + rows, mask=row_ok, other=0.0)[:, None]
        if QUANT_X:
            acc = acc * x_scale[:, None]
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(
            y_ptr + rows[:, None] * stride_y + cols[None, :],
            acc.to(y_ptr.dtype.element_ty),
            mask=row_ok[:, None] & col_ok[None, :],
        )


def lowbit_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    x_scales: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: Config | None = None,
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T (+ bias) for M <= MAX_ROWS, W in a models/linear.py layout:
    int4 when `zeros` is given (weight [N, K/2] uint8), else int8/fp8 [N, K] with per-row
    `scales`. fp8 weights multiply fp8 activations: `x_scales` [M] (or [M, 1]) with x
    holding fp8 values, each row scaled by its own; or x in 16 bits, which the kernel
    quantizes per token as kernels/fp8.py does (no separate launch). `config` overrides
    CONFIGS (bench/lowbit_gemv.py --sweep)."""
    m, k = x.shape
    assert m <= MAX_ROWS, f"lowbit_gemv serves at most {MAX_ROWS} rows, got {m}"
    int4 = zeros is not None
    n = weight.shape[0]
    assert weight.shape[1] * (2 if int4 else 1) == k
    x = x.contiguous()
    out_dtype = out_dtype or x.dtype
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    fp8 = weight.dtype == torch.float8_e4m3fn
    quant_x = fp8 and x.dtype != torch.float8_e4m3fn
    assert not fp8 or quant_x == (x_scales is None), "fp8 x needs x_scales, 16-bit x none"
    if fp8:  # e4m3 -> fp16 is exact and one instruction
        compute = tl.float16
    else:
        compute = {torch.float32: tl.float32, torch.float16: tl.float16}.get(x.dtype, tl.bfloat16)
    if int4:
        return _int4(x, weight, scales, zeros, bias, y, compute, config)
    kind = "fp8" if fp8 else "int8"
    block_n, block_k, warps, stages, per_sm = config or CONFIGS[kind]
    tiles = triton.cdiv(n, block_n)
    block_k = min(block_k, max(triton.next_power_of_2(k), 16))
    steps = triton.cdiv(k, block_k)
    splits = num_splits(x.device, tiles, steps, per_sm)
    space = workspace(x.device, splits * m * n) if splits > 1 else None
    if space is None:
        splits = 1
    part, counters = space or (y, y)
    per_split = steps // splits
    _gemv_kernel[(tiles, splits)](
        x, weight, scales, x_scales if x_scales is not None else scales,
        bias if bias is not None else scales, y, part, counters,
        m, n, k, x.stride(0), weight.stride(0), y.stride(0),
        STEPS=per_split, SPLITS=splits, X_SCALED=x_scales is not None, QUANT_X=quant_x,
        X_ROWS=1 if m == 1 else 16, HAS_BIAS=bias is not None, COMPUTE=compute,
        BLOCK_M=1 if m == 1 and ONE_ROW_FMA else 16, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y


def _int4(
    x: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    compute: tl.dtype,
    config: Config | None,
) -> torch.Tensor:
    m, k = x.shape
    n = weight.shape[0]
    group = k // scales.shape[1]
    assert group >= 16 and group & (group - 1) == 0, group
    block_n, block_k, warps, stages = config or INT4_CONFIG
    block_k = max(min(block_k, max(triton.next_power_of_2(k), 16)) // group, 1) * group
    int4_gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, scales, zeros, bias if bias is not None else scales, y,
        m, n, k, x.stride(0), weight.stride(0), scales.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, COMPUTE=compute, GROUP=group,
        BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y
