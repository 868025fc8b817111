"""Linear layers: dense, or weight-only quantized (int8, int4, fp8) as the builder writes them.

Tensor layout of one linear layer named `p` in an engine's weights (out = output features,
in = input features, G = in / INT4_GROUP_SIZE):

| quantization | tensors |
| --- | --- |
| none | `p.weight` [out, in] (engine dtype) |
| int8 | `p.weight` int8 [out, in]; `p.scales` float32 [out]: W = weight * scales[:, None] |
| int4 | `p.weight` uint8 [out, in/2] (see below); `p.scales`, `p.zeros` float32 [out, G] |
| fp8  | `p.weight` float8_e4m3fn [out, in]; `p.scales` float32 [out] |

int4: input channel 2j is in the low nibble of byte j and 2j+1 in the high one; values q are
0..15 and W[:, k] = (q[:, k] - zeros[:, k // 128]) * scales[:, k // 128].

Any layer may also have `p.bias` [out] (engine dtype) and `p.act_scale` [in] (float32), an
activation-aware scale the input is multiplied by before the product (the builder's int4
search; where it can fold the scale into the preceding RMSNorm it does, and writes none).

On CPU the weight-only quantized weights are dequantized on the fly, in the activation dtype.
A dense bfloat16 engine on a CPU with oneDNN's bfloat16 kernels keeps its weights reordered
once into oneDNN's blocked layout (`pack_for_cpu`): F.linear reorders them on every call, and
the products are bitwise the same.
fp8 engines also quantize each token's activations to fp8 (kernels/fp8.py) and, on GPUs of
compute capability >= 8.9, multiply in fp8 on the tensor cores. On CUDA, a product of at most
16 tokens (a small decode batch) reads the packed weight once in kernels/lowbit_gemv.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from runtime_service.kernels.fp8 import FP8_MAX, fp8_linear
from runtime_service.kernels.lowbit_gemv import MAX_ROWS, lowbit_gemv

QUANTIZATIONS = ("none", "int8", "int4", "fp8")
INT4_GROUP_SIZE = 128


class Linear(nn.Module):
    """y = (x * act_scale) @ W^T + b, with W stored as `quantization` describes."""

    def __init__(self, quantization: str, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
        self.quantization = quantization
        self.weight = nn.Buffer(tensors["weight"], persistent=False)
        self.scales = _buffer(tensors.get("scales"))
        self.zeros = _buffer(tensors.get("zeros"))
        self.bias = _buffer(tensors.get("bias"))
        self.act_scale = _buffer(tensors.get("act_scale"))
        if quantization == "int4":
            self.out_features, half_in = self.weight.shape
            self.in_features = half_in * 2
        else:
            self.out_features, self.in_features = self.weight.shape
        # kernels/int4_gemv.py tiles int4 by its groups: powers of two, >= 16 channels each.
        group = self.in_features // self.scales.shape[1] if quantization == "int4" else 16
        self._gemv_ok = group >= 16 and group & (group - 1) == 0
        self.packed = False  # the weight in oneDNN's layout (pack_for_cpu)

    def pack_for_cpu(self, rows: int) -> None:
        """Reorders a dense bfloat16 weight into oneDNN's blocked layout for products of about
        `rows` tokens (any count works; see `cpu_packing_applies`)."""
        assert self.quantization == "none" and not self.packed
        self.weight = nn.Buffer(reorder_for_cpu(self.weight, rows), persistent=False)
        self.packed = True

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as a dense [out, in] tensor of `dtype`."""
        if self.quantization == "none":
            return (self.weight.to_dense() if self.packed else self.weight).to(dtype)
        if self.quantization in ("int8", "fp8"):
            return (self.weight.to(torch.float32) * self.scales[:, None]).to(dtype)
        return dequantize_int4(self.weight, self.scales, self.zeros).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_scale is not None:
            x = x * self.act_scale.to(x.dtype)
        if self.packed:
            return packed_linear(x, self.weight, self.bias)
        if self.quantization == "none":
            return F.linear(x, self.weight, self.bias)
        if self.quantization == "fp8":
            return fp8_linear(x, self.weight, self.scales, self.bias)
        small = x.numel() <= MAX_ROWS * self.in_features  # a decode of a few tokens
        if x.is_cuda and x.dtype != torch.float32 and small and self._gemv_ok:
            x2 = x.reshape(-1, self.in_features)
            y = lowbit_gemv(x2, self.weight, self.scales, self.zeros, self.bias)
            return y.reshape(*x.shape[:-1], -1)
        if self.quantization == "int8":
            # Per-output-channel scales commute with the product: scale after it.
            y = F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)


def cpu_packing_applies(weight: torch.Tensor) -> bool:
    """Whether `pack_for_cpu` pays for this weight: bfloat16 on a CPU whose oneDNN has
    bfloat16 kernels (AVX512-BF16 or AMX)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def reorder_for_cpu(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A [out, in] weight in oneDNN's blocked layout, for `packed_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def packed_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """F.linear(x, W, bias) for W reordered by `reorder_for_cpu`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _buffer(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else nn.Buffer(t, persistent=False)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in/2] -> uint8 [out, in] with values 0..15 (low nibble first)."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in] with values 0..15 -> uint8 [out, in/2] (low nibble first)."""
    q = q.to(torch.uint8).reshape(q.shape[0], -1, 2)
    return q[..., 0] | (q[..., 1] << 4)


def dequantize_int4(
    packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor
) -> torch.Tensor:
    """float32 [out, in] from the int4 layout described in the module docstring."""
    q = unpack_int4(packed).to(torch.float32)
    out, num_in = q.shape
    groups = scales.shape[1]
    q = q.reshape(out, groups, num_in // groups)
    w = (q - zeros[:, :, None]) * scales[:, :, None]
    return w.reshape(out, num_in)


def quantize_fp8_rowwise(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """e4m3 weight [out, in] with one float32 scale per output channel (its largest
    magnitude maps to 448), as the fp8 layout above."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / FP8_MAX
    q = (w / scales[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {"weight": q, "scales": scales}


def quantize_int8_rowwise(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric int8 weight [out, in] with one float32 scale per output channel."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return {"weight": q, "scales": scales}


def int4_params(
    w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [out, in] uint8 in 0..15, scales [out, G], zeros [out, G]) of w [out, in]:
    asymmetric min/max ranges (always holding 0) in groups of `group_size` input channels.

    `clip` [out, G] in (0, 1], if given, shrinks each group's range before quantizing
    (values outside are clamped; the builder's activation-aware search picks it).
    """
    out, num_in = w.shape
    groups = w.float().reshape(out, num_in // group_size, group_size)
    w_max = groups.amax(dim=2)
    w_min = groups.amin(dim=2)
    if clip is not None:
        w_max, w_min = w_max * clip, w_min * clip
    w_max = torch.maximum(w_max, torch.zeros_like(w_max))
    w_min = torch.minimum(w_min, torch.zeros_like(w_min))
    scales = ((w_max - w_min) / 15.0).clamp(min=1e-8)
    zeros = torch.round(-w_min / scales).clamp(0, 15)
    q = torch.round(groups / scales[:, :, None] + zeros[:, :, None])
    q = q.clamp(0, 15).to(torch.uint8).reshape(out, num_in)
    return q, scales, zeros


def quantize_int4_grouped(
    w: torch.Tensor, group: int = INT4_GROUP_SIZE, clip: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The int4 layout above from w [out, in] (see `int4_params`)."""
    q, scales, zeros = int4_params(w, group, clip)
    return {"weight": pack_int4(q), "scales": scales, "zeros": zeros}
