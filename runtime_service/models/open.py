"""Opening a model directory for serving: the model on its device, its tokenizer, and facts.

A Hugging Face checkpoint directory is fused in place (development); a built engine
directory (with manifest.json) is loaded as the builder wrote it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmserve.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime_service.models.config import ModelConfig
from runtime_service.models.linear import (
    quantize_fp8_rowwise,
    quantize_int4_grouped,
    quantize_int8_rowwise,
)
from runtime_service.models.llama import LlamaModel
from runtime_service.models.loader import (
    load_engine,
    load_hf_model,
    read_engine_manifest,
    read_hf_config,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a runtime reports about the model it serves, and where its tokenizer is."""

    name: str
    path: Path
    quantization: str
    tokenizer_path: Path
    engine_id: str = ""


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not hasattr(tokenizer, "_tokenizer"):
        raise FailedPrecondition(f"{path}: a fast tokenizer (tokenizer.json) is required")
    return tokenizer


def dummy_weight_items(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, quantization: str = "none"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Random weights of the checkpoint's shapes, one tensor at a time, made on `device`
    (seeded: the same shapes give the same weights); quantization "fp8", "int8" or "int4"
    stores the linear layers as such an engine does (min/max int4, no clip search)."""
    c = config
    quantize = {
        "fp8": quantize_fp8_rowwise,
        "int8": quantize_int8_rowwise,
        "int4": quantize_int4_grouped,
    }.get(quantization)
    if quantize is None and quantization != "none":
        raise InvalidArgument(f"dummy weights come in none, fp8, int8 or int4, not {quantization}")
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device, dtype=dtype) * std

    def ones(size: int) -> torch.Tensor:
        return torch.ones(size, device=device, dtype=dtype)

    yield "embed.weight", rand(c.vocab_size, c.hidden_size)
    yield "norm.weight", ones(c.hidden_size)
    if not c.tie_word_embeddings:
        yield "lm_head.weight", rand(c.vocab_size, c.hidden_size)
    for i in range(c.num_layers):
        p = f"layers.{i}."
        for norm in ("attn_norm", "mlp_norm"):
            yield p + norm + ".weight", ones(c.hidden_size)
        if c.qk_norm:
            for norm in ("q_norm", "k_norm"):
                yield p + norm + ".weight", ones(c.head_dim)
        linears = {
            "qkv": (c.q_size + 2 * c.kv_size, c.hidden_size),
            "o": (c.hidden_size, c.q_size),
            "gate_up": (2 * c.intermediate_size, c.hidden_size),
            "down": (c.hidden_size, c.intermediate_size),
        }
        for name, shape in linears.items():
            weight = rand(*shape)
            bias = rand(shape[0]) if name == "qkv" and c.qkv_bias else None  # drawn after it
            if quantize is None:
                yield f"{p}{name}.weight", weight
            else:
                yield from ((f"{p}{name}.{k}", t) for k, t in quantize(weight).items())
            if bias is not None:
                yield p + "qkv.bias", bias


def dummy_weights(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, quantization: str = "none"
) -> dict[str, torch.Tensor]:
    """All of dummy_weight_items at once (benchmarks: no checkpoint on disk needed)."""
    return dict(dummy_weight_items(config, dtype, device, quantization))


def load_model(
    path: Path,
    dtype: torch.dtype,
    device: torch.device,
    max_model_len: int | None = None,
    load_format: str = "auto",
    verify: bool = True,
    dummy_quantization: str = "none",
    manifest_sha256: str | None = None,
) -> tuple[LlamaModel, ModelInfo]:
    """The model on its device (no tokenizer: the engine core needs none).

    load_format "auto" reads the weights; "dummy" makes random ones of the same shapes."""
    path = Path(path)
    if not path.is_dir():
        raise NotFound(f"model directory {path} does not exist")
    if (path / "manifest.json").exists():  # an engine the builder made
        manifest = read_engine_manifest(path, manifest_sha256)
        if manifest.dtype != str(dtype).removeprefix("torch."):
            log.info(
                "engine %s is %s; serving it in that dtype", manifest.engine_id, manifest.dtype
            )
        model = load_engine(
            path,
            device,
            verify=verify,
            max_positions=max_model_len,
            manifest_sha256=manifest_sha256,
        )
        return model, ModelInfo(
            name=manifest.model_name,
            path=path,
            quantization=manifest.quantization,
            tokenizer_path=path,
            engine_id=manifest.engine_id,
        )
    if not (path / "config.json").exists():
        raise FailedPrecondition(f"{path} has no config.json (not a Hugging Face checkpoint)")
    if load_format == "dummy":
        config = read_hf_config(path)
        weights = dummy_weights(config, dtype, device, dummy_quantization)
        model = LlamaModel(config, weights, dummy_quantization, max_model_len)
    else:
        model = load_hf_model(path, dtype, device, max_model_len)
    quantization = dummy_quantization if load_format == "dummy" else "none"
    info = ModelInfo(name=path.name, path=path, quantization=quantization, tokenizer_path=path)
    return model, info
