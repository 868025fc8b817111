"""Weight names: Hugging Face checkpoints to the engine's fused layout, and reading them.

The engine keeps q/k/v as one fused projection and gate/up as another, so each layer runs
two matrix products where the checkpoint has five:

| engine name | from the Hugging Face checkpoint |
| --- | --- |
| `embed.weight` | `model.embed_tokens.weight` |
| `layers.{i}.attn_norm.weight` | `model.layers.{i}.input_layernorm.weight` |
| `layers.{i}.qkv.{weight,bias}` | `self_attn.{q,k,v}_proj`, concatenated on the output dim |
| `layers.{i}.q_norm.weight`, `k_norm.weight` | `self_attn.{q,k}_norm.weight` (Qwen3) |
| `layers.{i}.o.{weight,bias}` | `self_attn.o_proj` |
| `layers.{i}.mlp_norm.weight` | `post_attention_layernorm.weight` |
| `layers.{i}.gate_up.{weight,bias}` | `mlp.{gate,up}_proj`, concatenated on the output dim |
| `layers.{i}.down.{weight,bias}` | `mlp.down_proj` |
| `norm.weight` | `model.norm.weight` |
| `lm_head.weight` | `lm_head.weight` (absent when embeddings are tied) |
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from runtime_service.models.config import ModelConfig

# Fused linear layers of a decoder layer, and the checkpoint projections each one holds.
FUSED_LINEARS: dict[str, tuple[str, ...]] = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o": ("self_attn.o_proj",),
    "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
    "down": ("mlp.down_proj",),
}
# Which fused layer, and which part of it, a LoRA target module (PEFT's names) changes.
LORA_TARGETS: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv", 0),
    "k_proj": ("qkv", 1),
    "v_proj": ("qkv", 2),
    "o_proj": ("o", 0),
    "gate_proj": ("gate_up", 0),
    "up_proj": ("gate_up", 1),
    "down_proj": ("down", 0),
}


def linear_names(config: ModelConfig) -> list[str]:
    """Engine names (without .weight) of every linear layer that may be quantized."""
    return [f"layers.{i}.{name}" for i in range(config.num_layers) for name in FUSED_LINEARS]


def fused_output_sizes(config: ModelConfig, name: str) -> tuple[int, ...]:
    """Output sizes of the parts of fused layer `name` (qkv, o, gate_up, down)."""
    return {
        "qkv": (config.q_size, config.kv_size, config.kv_size),
        "o": (config.hidden_size,),
        "gate_up": (config.intermediate_size, config.intermediate_size),
        "down": (config.hidden_size,),
    }[name]


def fuse_hf_weights(
    config: ModelConfig, get: Callable[[str], torch.Tensor | None]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (engine name, tensor) pairs from a checkpoint's tensors, one at a time.

    `get(name)` returns the checkpoint tensor of that Hugging Face name, or None if absent.
    """

    def need(name: str) -> torch.Tensor:
        t = get(name)
        if t is None:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        return t

    yield "embed.weight", need("model.embed_tokens.weight")
    for i in range(config.num_layers):
        hf = f"model.layers.{i}."
        yield f"layers.{i}.attn_norm.weight", need(hf + "input_layernorm.weight")
        yield f"layers.{i}.mlp_norm.weight", need(hf + "post_attention_layernorm.weight")
        if config.qk_norm:
            yield f"layers.{i}.q_norm.weight", need(hf + "self_attn.q_norm.weight")
            yield f"layers.{i}.k_norm.weight", need(hf + "self_attn.k_norm.weight")
        for fused, parts in FUSED_LINEARS.items():
            yield f"layers.{i}.{fused}.weight", torch.cat([need(hf + p + ".weight") for p in parts])
            biases = [get(hf + p + ".bias") for p in parts]
            if any(b is not None for b in biases):
                yield f"layers.{i}.{fused}.bias", torch.cat([need(hf + p + ".bias") for p in parts])
    yield "norm.weight", need("model.norm.weight")
    if not config.tie_word_embeddings:
        yield "lm_head.weight", need("lm_head.weight")


class SafetensorsCheckpoint:
    """Lazy reader of a Hugging Face directory's (possibly sharded) safetensors files."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        index = path / "model.safetensors.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {path}")
        self._handles = [safe_open(str(path / f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}  # noqa: SIM118

    def get(self, name: str) -> torch.Tensor | None:
        handle = self._where.get(name)
        return None if handle is None else handle.get_tensor(name)

    def names(self) -> list[str]:
        return sorted(self._where)
