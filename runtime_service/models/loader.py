"""Loading a model: from a Hugging Face directory (fused in place) or an engine's weights."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from runtime_service.models.config import ModelConfig
from runtime_service.models.llama import LlamaModel
from runtime_service.models.weights import SafetensorsCheckpoint, fuse_hf_weights

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {name!r}")
    return DTYPES[name]


def read_hf_config(path: Path) -> ModelConfig:
    return ModelConfig.from_hf(json.loads((path / "config.json").read_text()))


def cast_weights(
    weights: Mapping[str, torch.Tensor], dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Floating tensors to `dtype` (quantized payloads and float32 scales keep theirs)."""
    out = {}
    for name, t in weights.items():
        keep = (
            not t.is_floating_point()
            or t.dtype == torch.float8_e4m3fn
            or (name.endswith((".scales", ".zeros", ".act_scale")))
        )
        out[name] = t.to(device=device, dtype=None if keep else dtype)
    return out


def load_hf_model(
    path: Path, dtype: torch.dtype, device: torch.device, max_positions: int | None = None
) -> LlamaModel:
    """Reads a Hugging Face checkpoint directory and builds the unquantized model."""
    config = read_hf_config(path)
    checkpoint = SafetensorsCheckpoint(path)
    weights = {
        name: t.to(device=device, dtype=dtype)
        for name, t in fuse_hf_weights(config, checkpoint.get)
    }
    return LlamaModel(config, weights, "none", max_positions)


def allocate_kv_caches(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[torch.Tensor]:
    """One [2, num_blocks, block_size, num_kv_heads, head_dim] tensor per layer."""
    shape = (2, num_blocks, block_size, config.num_kv_heads, config.head_dim)
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
