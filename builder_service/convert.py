"""Fused float32 weights -> an engine's weights: quantized linear layers, the rest cast.

Embeddings, norms, biases and the LM head stay unquantized in the engine dtype; the four
linear layers of each decoder layer (qkv, o, gate_up, down) are quantized as asked. Scales,
zero points and activation scales stay float32 (runtime_service/models/linear.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from builder_service.awq import awq_search
from builder_service.calibration import LayerInputs
from builder_service.quantize import int4_group_size, quantize_fp8, quantize_int4, quantize_int8
from runtime_service.models.config import ModelConfig
from runtime_service.models.weights import linear_names

# Which RMSNorm feeds a linear layer (where int4 activation scales are folded).
_FEEDING_NORM = {"qkv": "attn_norm", "gate_up": "mlp_norm"}
# Fused layers of an int4 engine whose inputs arrive divided by those folded scales.
INT4_FOLDED_LAYERS = tuple(_FEEDING_NORM)

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], message)


@dataclass(slots=True)
class ConversionReport:
    """What quantization did, for the manifest and the logs."""

    int4_group_sizes: dict[int, int] = field(default_factory=dict)  # input width -> group
    awq_alphas: list[float] = field(default_factory=list)
    awq_error_reduction: float | None = None  # mean of (rtn error / awq error) over layers

    def to_json(self) -> dict[str, object]:
        if not self.awq_alphas:
            return {}
        return {
            "int4_group_sizes": {str(k): v for k, v in sorted(self.int4_group_sizes.items())},
            "awq_mean_alpha": sum(self.awq_alphas) / len(self.awq_alphas),
            "awq_mean_error_reduction": self.awq_error_reduction,
        }


def _int4_layer(
    name: str,
    w: torch.Tensor,
    weights: dict[str, torch.Tensor],
    inputs: LayerInputs,
    grid: int,
    report: ConversionReport,
    ratios: list[float],
) -> dict[str, torch.Tensor]:
    w = w.to(inputs.sample.device)
    group_size = int4_group_size(w.shape[1])
    report.int4_group_sizes[w.shape[1]] = group_size
    result = awq_search(w, inputs.sample, inputs.mean_abs, group_size, grid)
    report.awq_alphas.append(result.alpha)
    ratios.append(result.rtn_error / max(result.error, 1e-30))
    tensors = quantize_int4(w * result.scale, group_size, result.clip)
    prefix, short = name.rsplit(".", 1)
    if short in _FEEDING_NORM:
        norm = f"{prefix}.{_FEEDING_NORM[short]}.weight"
        weights[norm] = weights[norm].float() / result.scale.cpu()
    else:
        tensors["act_scale"] = (1.0 / result.scale).float()
    return tensors


def convert_weights(
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    quantization: str,
    dtype: torch.dtype,
    layer_inputs: dict[str, LayerInputs] | None = None,
    awq_grid: int = 20,
    progress: Progress | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """The engine's tensors from fused weights (float32, consumed: norms may be rescaled).

    `layer_inputs` (from calibration.collect_layer_inputs) is required for int4.
    """
    if quantization == "int4" and layer_inputs is None:
        raise ValueError("int4 needs calibration inputs for its scale search")
    report = ConversionReport()
    ratios: list[float] = []
    out: dict[str, torch.Tensor] = {}
    names = linear_names(config) if quantization != "none" else []
    for done, name in enumerate(names):
        w = weights.pop(f"{name}.weight").float()
        if quantization == "int8":
            tensors = quantize_int8(w)
        elif quantization == "fp8":
            tensors = quantize_fp8(w)
        elif quantization == "int4":
            assert layer_inputs is not None
            tensors = _int4_layer(name, w, weights, layer_inputs[name], awq_grid, report, ratios)
        else:
            raise ValueError(f"unknown quantization {quantization!r}")
        out.update({f"{name}.{key}": t.cpu().contiguous() for key, t in tensors.items()})
        if progress is not None:
            progress((done + 1) / len(names), f"quantized {name} ({quantization})")
    for name, t in weights.items():
        out[name] = t.to(dtype).contiguous()
    if ratios:
        report.awq_error_reduction = sum(ratios) / len(ratios)
    return out, report
