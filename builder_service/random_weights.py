"""Engines of random weights: the source's shapes and tokenizer, seeded random tensors.

For benchmarks (an 8B-shaped engine without an 8B checkpoint): the source may be a directory
with config.json and a tokenizer alone. The tensors are made on the builder's device one at a
time (runtime_service.models.open.dummy_weight_items, the same values as the runtime's
`--load-format dummy`, quantized as an engine of that quantization stores them) and written
one shard at a time, so a 16 GB engine never sits in memory whole. Nothing is loaded through
transformers and no perplexity is measured: the manifest's validation says `skipped`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from builder_service.engine_files import tokenizer_info, write_model_files, write_weight_items
from builder_service.sources import Source
from builder_service.spec import BuildEvent, BuildSpec
from llmserve.store import EngineManifest, Validation
from runtime_service.models.config import ModelConfig
from runtime_service.models.open import dummy_weight_items

log = logging.getLogger(__name__)

RANDOM_SEED = 0  # dummy_weight_items' seed; part of the engine's build options


def num_parameters(config: ModelConfig) -> int:
    """Parameters of the unquantized model of this shape (what a real build counts)."""
    c = config
    per_layer = (
        2 * c.hidden_size
        + (2 * c.head_dim if c.qk_norm else 0)
        + (c.q_size + 2 * c.kv_size) * (c.hidden_size + (1 if c.qkv_bias else 0))
        + c.hidden_size * c.q_size
        + 3 * c.intermediate_size * c.hidden_size
    )
    heads = 1 if c.tie_word_embeddings else 2
    return heads * c.vocab_size * c.hidden_size + c.hidden_size + c.num_layers * per_layer


def _tokenizer_and_generation_config(source: Source) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, GenerationConfig

    if source.is_gguf:
        tokenizer = AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name)
        return tokenizer, None
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    generation = None
    if (source.path / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(source.path)
    return tokenizer, generation


def compile_random(
    staging: Path,
    spec: BuildSpec,
    source: Source,
    hf_config: dict[str, Any],
    manifest_fields: dict[str, Any],
    device: str,
    emit: Callable[[BuildEvent], None],
) -> dict[str, Any]:
    """Writes a random-weight engine of `spec` into staging; returns its manifest.
    manifest_fields: the EngineManifest fields the builder decided (id, digest, options...)."""
    config = ModelConfig.from_hf(hf_config)
    total = num_parameters(config)
    emit(BuildEvent("converting", 30.0, f"random {spec.quantization}/{spec.dtype} weights"))
    done = [0]

    def on_host() -> Iterator[tuple[str, torch.Tensor]]:
        dtype = getattr(torch, spec.dtype)
        items = dummy_weight_items(config, dtype, torch.device(device), spec.quantization)
        for name, t in items:
            before = done[0]  # progress in elements (packed int4 ends short of 100%)
            done[0] += math.prod(t.shape)
            if done[0] * 10 // total != before * 10 // total:
                emit(BuildEvent("converting", 30.0 + 55.0 * min(1.0, done[0] / total), name))
            yield name, t.to("cpu")

    names = write_weight_items(on_host(), staging)
    tokenizer, generation = _tokenizer_and_generation_config(source)
    files = write_model_files(staging, hf_config, tokenizer, generation)
    manifest = EngineManifest(
        architecture=config.architecture,
        target=spec.target,
        quantization=spec.quantization,
        dtype=spec.dtype,
        num_parameters=total,
        tokenizer=tokenizer_info(tokenizer, files, config.eos_token_ids),
        # NOTE: random weights have no perplexity worth a bound: the check is skipped, and the
        # manifest says so (never "passed").
        validation=Validation(float("nan"), float("nan"), 0.0, 0, skipped=True),
        **manifest_fields,
    )
    log.info(
        "engine %s: %d random weight shards, validation skipped", manifest.engine_id, len(names)
    )
    emit(BuildEvent("validating", 88.0, "validation skipped: random weights"))
    emit(BuildEvent("publishing", 90.0, f"publishing engine {manifest.engine_id}"))
    return manifest.to_json()
