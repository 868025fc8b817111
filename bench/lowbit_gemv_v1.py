"""The int8/fp8 GEMV as it was before split-K and the fused fp8 quantization (commit
6474d45's runtime_service/kernels/lowbit_gemv.py without its int4 branch, which is
runtime_service/kernels/int4_gemv.py again): the baseline that bench/lowbit_gemv.py --sweep
times the current kernels against. Not used by the engine.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 16  # tokens per call that these kernels serve; beyond, the dense paths
# (BLOCK_N, BLOCK_K, warps, stages) per weight kind, from bench/lowbit_gemv.py --sweep on an
# H200 (docs/engine_speed.md).
CONFIGS = {"int8": (32, 256, 4, 4), "fp8": (32, 512, 4, 3)}


@triton.jit
def _gemv_kernel(
    x_ptr,  # [M, K] activations (bf16/fp16/fp32, or fp8 with x_scale)
    w_ptr,  # [N, K] int8/fp8
    s_ptr,  # [N] float32 scales
    xs_ptr,  # [M] float32 per-token activation scales (fp8 only)
    y_ptr,  # [M, N]
    M,
    N,
    K: tl.constexpr,  # one compiled variant per layer width (a model has a few)
    stride_x,
    stride_w,
    stride_y,
    X_SCALED: tl.constexpr,
    COMPUTE: tl.constexpr,  # the operands' type in the dot (bf16/fp16 on GPUs; fp32 in tests)
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
        w = tl.load(
            w_ptr + cols[:, None] * stride_w + ks[None, :],
            mask=col_ok[:, None] & (ks[None, :] < K),
            other=0.0,
        ).to(COMPUTE)
        acc += tl.dot(x, tl.trans(w))
    scale = tl.load(s_ptr + cols, mask=col_ok, other=0.0)  # per channel: commutes with the dot
    acc = acc * scale[None, :]
    if X_SCALED:
        xs = tl.load(xs_ptr + rows, mask=row_ok, other=0.0)
        acc = acc * xs[:, None]
    tl.store(
        y_ptr + rows[:, None] * stride_y + cols[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


def lowbit_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor,
    x_scales: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T for M <= MAX_ROWS, W int8/fp8 [N, K] with per-row `scales`.
    `x_scales` [M] (or [M, 1]): x holds fp8 values, each row scaled by its own."""
    m, k = x.shape
    assert m <= MAX_ROWS, f"lowbit_gemv serves at most {MAX_ROWS} rows, got {m}"
    n = weight.shape[0]
    x = x.contiguous()
    y = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    if x.dtype == torch.float8_e4m3fn:  # e4m3 -> fp16 is exact and one instruction
        compute = tl.float16
    else:
        compute = {torch.float32: tl.float32, torch.float16: tl.float16}.get(x.dtype, tl.bfloat16)
    kind = "fp8" if x.dtype == torch.float8_e4m3fn else "int8"
    block_n, block_k, warps, stages = config or CONFIGS[kind]
    block_k = min(block_k, max(triton.next_power_of_2(k), 16))
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, scales, x_scales if x_scales is not None else scales, y,
        m, n, k, x.stride(0), weight.stride(0), y.stride(0),
        X_SCALED=x_scales is not None, COMPUTE=compute,
        BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return y
