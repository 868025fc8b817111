"""Writing an engine's files into a staging directory.

    weights-00001-of-0000N.safetensors   the engine's tensors (weights.py names, linear.py
                                         formats), in shards of at most SHARD_BYTES
    config.json                          the model's Hugging Face config
    generation_config.json               when the source has one
    tokenizer.json, tokenizer_config.json, chat_template.jinja, ...   the tokenizer
    manifest.json                        written by the store at publish

runtime_service.models.loader.load_engine reads them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

SHARD_BYTES = 2 * 1024**3


def write_weights(
    weights: dict[str, torch.Tensor], out: Path, max_bytes: int = SHARD_BYTES
) -> list[str]:
    """Saves the tensors (in name order) as safetensors shards; returns the file names."""
    return write_weight_items(((name, weights[name]) for name in sorted(weights)), out, max_bytes)


def write_weight_items(
    items: Iterable[tuple[str, torch.Tensor]], out: Path, max_bytes: int = SHARD_BYTES
) -> list[str]:
    """Saves (name, tensor) pairs as they come, one shard at a time: at most one shard's
    tensors are held (an 8B engine's 16 GB never are at once). Returns the file names."""
    from safetensors.torch import save_file

    parts: list[Path] = []
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        path = out / f".shard-{len(parts) + 1:05d}.safetensors"
        save_file(shard, path, metadata={"format": "pt"})
        parts.append(path)

    for name, t in items:
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > max_bytes:
            flush()
            shard, size = {}, 0
        shard[name] = t.contiguous()
        size += nbytes
    if shard or not parts:
        flush()
    names = []
    for i, path in enumerate(parts, start=1):
        name = f"weights-{i:05d}-of-{len(parts):05d}.safetensors"
        path.rename(out / name)
        names.append(name)
    return names


def write_model_files(
    out: Path, hf_config: dict[str, Any], tokenizer: Any, generation_config: Any
) -> list[str]:
    """config.json, generation_config.json and the tokenizer's files; returns their names."""
    before = {p.name for p in out.iterdir()}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    if generation_config is not None:
        generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sorted({p.name for p in out.iterdir()} - before)


def tokenizer_info(tokenizer: Any, files: list[str], eos_token_ids: tuple[int, ...]) -> dict:
    """What the manifest says about the tokenizer."""
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "eos_token_ids": list(eos_token_ids),
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "files": [f for f in files if f.startswith(("tokenizer", "special_tokens", "chat_"))],
    }
