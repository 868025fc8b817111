"""Shared fixtures: test models (built locally, cached in .cache/models) and GPU skipping."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Without CUDA, Triton kernels run in Triton's interpreter. Triton reads this when it is first
# imported (transformers imports it early), so it is set here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from llmserve.testing import smollm2, tiny_models

MODEL_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "models"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Callable[[str], Path]:
    """tiny_model_dir(arch) -> the cached tiny checkpoint of llama|mistral|qwen2|qwen3."""
    return lambda arch: tiny_models.tiny_model(arch, MODEL_CACHE)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory, converted from the packaged GGUF."""
    return smollm2.hf_dir(MODEL_CACHE)
