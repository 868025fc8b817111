"""The low-bit GEMV as it was before the int4 planes and split-K (commit 6474d45's
runtime_service/kernels/lowbit_gemv.py, unchanged but for this docstring): the baseline that
bench/lowbit_gemv.py --sweep times the current kernels against. Not used by the engine.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 16  # tokens per call that these kernels serve; beyond, the dense paths
# (BLOCK_N, BLOCK_K, warps, stages) per weight kind, from bench/lowbit_gemv.py --sweep on an
# H200 (docs/engine_speed.md).
CONFIGS = {"int8": (32, 256, 4, 4), "int4": (32, 512, 4, 3), "fp8": (32, 512, 4, 3)}


@triton.jit
def _gemv_kernel(
    x_ptr,  # [M, K] activations (bf16/fp16/fp32, or fp8 with x_scale)
    w_ptr,  # [N, K] int8/fp8, or [N, K/2] uint8 (int4)
    s_ptr,  # [N] or [N, K/GROUP] float32 scales
    z_ptr,  # [N, K/GROUP] float32 zeros (int4 only)
    xs_ptr,  # [M] float32 per-token activation scales (fp8 only)
    b_ptr,  # [N] bias or nothing
    y_ptr,  # [M, N]
    M,
    N,
    K: tl.constexpr,  # one compiled variant per layer width (a model has a few)
    stride_x,
    stride_w,
    stride_s,
    stride_y,
    INT4: tl.constexpr,
    X_SCALED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    COMPUTE: tl.constexpr,  # the operands' type in the dot (bf16/fp16 on GPUs; fp32 in tests)
    GROUP: tl.constexpr,  # int4: input channels per scale and zero
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
        if INT4:
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
        else:
            w = tl.load(
                w_ptr + cols[:, None] * stride_w + ks[None, :],
                mask=col_ok[:, None] & (ks[None, :] < K),
                other=0.0,
            ).to(COMPUTE)
        acc += tl.dot(x, tl.trans(w))
    if not INT4:  # per-output-channel scales commute with the product
        scale = tl.load(s_ptr + cols, mask=col_ok, other=0.0)
        acc = acc * scale[None, :]
    if X_SCALED:
        xs = tl.load(xs_ptr + rows, mask=row_ok, other=0.0)
        acc = acc * xs[:, None]
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
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
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T (+ bias) for M <= MAX_ROWS, W in a models/linear.py layout:
    int4 when `zeros` is given (weight [N, K/2] uint8), else int8/fp8 [N, K] with per-row
    `scales`. `x_scales` [M] (or [M, 1]): x holds fp8 values, each row scaled by its own."""
    m, k = x.shape
    assert m <= MAX_ROWS, f"lowbit_gemv serves at most {MAX_ROWS} rows, got {m}"
    int4 = zeros is not None
    n = weight.shape[0]
    assert weight.shape[1] * (2 if int4 else 1) == k
    x = x.contiguous()
    out_dtype = out_dtype or x.dtype
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if x.dtype == torch.float8_e4m3fn:  # e4m3 -> fp16 is exact and one instruction
        compute = tl.float16
    else:
        compute = {torch.float32: tl.float32, torch.float16: tl.float16}.get(x.dtype, tl.bfloat16)
    group = k // scales.shape[1] if int4 else 1
    assert not int4 or (group >= 16 and group & (group - 1) == 0), group
    kind = "int4" if int4 else ("fp8" if x.dtype == torch.float8_e4m3fn else "int8")
    block_n, block_k, warps, stages = config or CONFIGS[kind]
    block_k = min(block_k, max(triton.next_power_of_2(k), 16))
    if int4:
        block_k = max(block_k // group, 1) * group
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x,
        weight,
        scales,
        zeros if int4 else scales,
        x_scales if x_scales is not None else scales,
        bias if bias is not None else scales,
        y,
        m,
        n,
        k,
        x.stride(0),
        weight.stride(0),
        scales.stride(0),
        y.stride(0),
        INT4=int4,
        X_SCALED=x_scales is not None,
        HAS_BIAS=bias is not None,
        COMPUTE=compute,
        GROUP=group,
        BLOCK_M=16,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
        num_stages=stages,
    )
    return y
