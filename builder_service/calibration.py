"""The calibration text and the activations a model sees on it.

The text (llmserve/data/calibration.txt, kept in the repository) serves two purposes: the
int4 scale search learns which input channels matter from the activations it produces, and
validation measures perplexity on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime_service.models.llama import LlamaModel
from runtime_service.models.scoring import sequence_logits

CALIBRATION_TEXT = Path(__file__).resolve().parent.parent / "llmserve" / "data" / "calibration.txt"
# Linear layers of a decoder layer, by engine name, and the module path to them.
LINEAR_MODULES = {"qkv": "attn.qkv", "o": "attn.o", "gate_up": "mlp.gate_up", "down": "mlp.down"}


def calibration_text() -> str:
    return CALIBRATION_TEXT.read_text(encoding="utf-8")


def calibration_sha256() -> str:
    return hashlib.sha256(CALIBRATION_TEXT.read_bytes()).hexdigest()


def windows(token_ids: list[int], window: int) -> list[list[int]]:
    """Non-overlapping chunks of at most `window` tokens."""
    return [token_ids[i : i + window] for i in range(0, len(token_ids), window)]


@dataclass(slots=True)
class LayerInputs:
    """What one linear layer's input looked like over the calibration text."""

    mean_abs: torch.Tensor  # [in] float32: mean |x| per input channel, over every token
    sample: torch.Tensor  # [n, in] float32: inputs at evenly spaced tokens


@torch.inference_mode()
def collect_layer_inputs(
    model: LlamaModel, token_ids: list[int], window: int, num_samples: int
) -> dict[str, LayerInputs]:
    """Inputs of every linear layer ("layers.{i}.qkv", ...) while the model reads token_ids.

    The text is read in windows of `window` tokens, as validation does; `num_samples`
    tokens spread evenly over it are kept whole for the error measurements of the search.
    """
    total = len(token_ids)
    keep = torch.linspace(0, total - 1, min(num_samples, total)).round().long().unique()
    sums: dict[str, torch.Tensor] = {}
    samples: dict[str, list[torch.Tensor]] = {}
    offset = 0
    handles = []

    def hook_for(name: str):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].float()
            sums[name] = sums.get(name, 0) + x.abs().sum(dim=0)  # type: ignore[operator]
            local = keep[(keep >= offset) & (keep < offset + x.shape[0])] - offset
            samples.setdefault(name, []).append(x[local].clone())

        return hook

    for i, layer in enumerate(model.layers):
        for short, path in LINEAR_MODULES.items():
            module = layer.get_submodule(path)
            handles.append(module.register_forward_pre_hook(hook_for(f"layers.{i}.{short}")))
    try:
        for chunk in windows(token_ids, window):
            sequence_logits(model, chunk)
            offset += len(chunk)
    finally:
        for handle in handles:
            handle.remove()
    return {
        name: LayerInputs(mean_abs=sums[name] / total, sample=torch.cat(samples[name]))
        for name in sums
    }
