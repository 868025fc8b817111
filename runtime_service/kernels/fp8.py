"""fp8 (e4m3) activations: per-token dynamic scales, for fp8 x fp8 matrix products.

An fp8 engine's linear layer computes y = (q_x * s_x) @ (q_w * s_w)^T with q_x the token's
activations scaled so their largest magnitude maps to 448 (one float32 scale per token, found
at run time) and q_w, s_w the builder's per-output-channel fp8 weights. On CUDA (compute
capability >= 8.9) the product runs in fp8 on the tensor cores (torch._scaled_mm with
row-wise scales); elsewhere the same quantized values are multiplied in the activation dtype,
so every device computes the same rounding of the activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from runtime_service.kernels.lowbit_gemv import MAX_ROWS, lowbit_gemv

FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Calls of at most this many tokens quantize x inside lowbit_gemv (one launch instead of
# quantize_per_token's and the product's; every program quantizes its own x tile, so it
# pays for one token, whose row the kernel quantizes once and broadcasts to the dot's 16;
# the compiled loop is no longer than the pre-quantized one's). 0: never.
# bench/lowbit_gemv.py --sweep times both ("fp8-fused" against "fp8").
FUSE_QUANTIZATION_ROWS = 1
_TINY = 1e-12


def quantize_per_token_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn [T, n], scales float32 [T, 1]) with x ~= q * scales."""
    xf = x.float()
    scales = xf.abs().amax(dim=-1, keepdim=True).clamp(min=_TINY) / FP8_MAX
    q = (xf / scales).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scales


@triton.jit
def _quantize_kernel(x_ptr, q_ptr, s_ptr, n, stride_x, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < n, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0), 1e-12) / 448.0
    tl.store(s_ptr + row, scale)
    for start in range(0, n, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < n, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
        tl.store(q_ptr + row * n + cols, q.to(q_ptr.dtype.element_ty), mask=cols < n)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not x.is_cuda:
        return quantize_per_token_reference(x)
    rows, n = x.shape
    q = torch.empty((rows, n), dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    if rows:
        _quantize_kernel[(rows,)](x, q, scales, n, x.stride(0), BLOCK=1024)
    return q, scales


def fp8_compute_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [..., in] (bf16/fp16/fp32) times fp8 weight [out, in] with per-channel scales [out]."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    fp8_compute = fp8_compute_supported(x.device) and x.dtype != torch.float32
    small = fp8_compute and x2.shape[0] <= MAX_ROWS  # a few tokens: bound by reading W
    if small and x2.shape[0] <= FUSE_QUANTIZATION_ROWS:
        y = lowbit_gemv(x2, weight, scales, bias=bias, out_dtype=x.dtype)
        return y.reshape(*shape[:-1], -1)
    q, x_scales = quantize_per_token(x2)
    if small:
        y = lowbit_gemv(q, weight, scales, bias=bias, x_scales=x_scales, out_dtype=x.dtype)
    elif fp8_compute:
        y = torch._scaled_mm(
            q,
            weight.t(),
            scale_a=x_scales,
            scale_b=scales[None, :],
            bias=bias,
            out_dtype=x.dtype,
        )
    else:  # the same quantized values in float32; both scales commute with the product
        y = F.linear(q.to(torch.float32), weight.to(torch.float32)) * x_scales * scales
        y = y.to(x.dtype) if bias is None else (y + bias).to(x.dtype)
    return y.reshape(*shape[:-1], -1)
