"""Opening a model directory for serving: the model on its device, its tokenizer, and facts.

A Hugging Face checkpoint directory is fused in place (development); a built engine
directory (with manifest.json) is loaded as the builder wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmserve.errors import FailedPrecondition, NotFound
from runtime_service.models.llama import LlamaModel
from runtime_service.models.loader import load_hf_model


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a runtime reports about the model it serves."""

    name: str
    path: Path
    quantization: str
    engine_id: str = ""


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not hasattr(tokenizer, "_tokenizer"):
        raise FailedPrecondition(f"{path}: a fast tokenizer (tokenizer.json) is required")
    return tokenizer


def load_model_and_tokenizer(
    path: Path, dtype: torch.dtype, device: torch.device, max_model_len: int | None = None
) -> tuple[LlamaModel, Any, ModelInfo]:
    path = Path(path)
    if not path.is_dir():
        raise NotFound(f"model directory {path} does not exist")
    if (path / "manifest.json").exists():
        raise FailedPrecondition(f"{path} is a built engine; engine loading is not wired yet")
    if not (path / "config.json").exists():
        raise FailedPrecondition(f"{path} has no config.json (not a Hugging Face checkpoint)")
    model = load_hf_model(path, dtype, device, max_model_len)
    info = ModelInfo(name=path.name, path=path, quantization="none")
    return model, load_tokenizer(path), info
