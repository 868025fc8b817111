"""Shared fixtures: test models (built locally, cached in .cache/models) and GPU skipping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llmserve.processes import REPO_ROOT
from llmserve.testing import smollm2, tiny_models

MODEL_CACHE = REPO_ROOT / ".cache" / "models"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

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
