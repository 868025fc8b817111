"""Weight quantizers producing the tensor formats of runtime_service/models/linear.py.

All take a float32 weight [out, in] and return the tensors of one quantized linear layer
(without `bias`/`act_scale`, which the caller adds):

- int8: symmetric, one scale per output channel, q in [-127, 127].
- int4: asymmetric in groups of input channels, integer zero points, q in [0, 15], packed two
  per byte with the even channel in the low nibble.
- fp8: e4m3 with one scale per output channel, mapping each row's largest magnitude to 448.
"""

from __future__ import annotations

import torch

from llmserve.errors import FailedPrecondition
from llmserve.reasons import Reason
from runtime_service.models.linear import (
    INT4_GROUP_SIZE,
    dequantize_int4,
    int4_params,
    quantize_fp8_rowwise,
    quantize_int4_grouped,
    quantize_int8_rowwise,
)


def int4_group_size(in_features: int) -> int:
    """128, or for an input width that 128 does not divide, the largest power of two <= 128
    that divides it (576 -> 64): every group must be whole for the layout to hold."""
    if in_features % INT4_GROUP_SIZE == 0:
        return INT4_GROUP_SIZE
    size = INT4_GROUP_SIZE
    while size > 1 and in_features % size:
        size //= 2
    if size < 8:
        raise FailedPrecondition(
            f"int4 needs linear layers whose input width is a multiple of 8, got {in_features}",
            reason=Reason.SOURCE_UNSUPPORTED,
        )
    return size


def quantize_int8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    return quantize_int8_rowwise(w)


def quantize_fp8(w: torch.Tensor) -> dict[str, torch.Tensor]:
    return quantize_fp8_rowwise(w)


def quantize_int4(
    w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    return quantize_int4_grouped(w, group_size, clip)


def fake_quantize_int4(
    w: torch.Tensor, group_size: int, clip: torch.Tensor | None = None
) -> torch.Tensor:
    """w quantized to int4 and back, float32 [out, in]: what the engine will compute with."""
    q, scales, zeros = int4_params(w, group_size, clip)
    out, num_in = q.shape
    groups = q.float().reshape(out, num_in // group_size, group_size)
    return ((groups - zeros[:, :, None]) * scales[:, :, None]).reshape(out, num_in)


def dequantize(tensors: dict[str, torch.Tensor], quantization: str) -> torch.Tensor:
    """float32 [out, in] weight of one quantized layer (for tests and error measurements)."""
    if quantization in ("int8", "fp8"):
        return tensors["weight"].float() * tensors["scales"][:, None]
    if quantization == "int4":
        return dequantize_int4(tensors["weight"], tensors["scales"], tensors["zeros"])
    return tensors["weight"].float()
