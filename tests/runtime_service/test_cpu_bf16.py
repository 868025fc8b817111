"""bfloat16 on the CPU against transformers' bfloat16 on the CPU: teacher-forced logits within
2e-2 (prefill positions and every decoded token's top-20 log-probabilities), SmolLM2 and a
tiny Qwen3 (q/k norms). The same check as the CUDA one in test_gpu_precision.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.runtime_service.test_gpu_precision import check_bf16_logits


def test_smollm2_bf16_logits_match_transformers(smollm2_dir: Path) -> None:
    check_bf16_logits(smollm2_dir, "cpu")


def test_qwen3_bf16_logits_match_transformers(tiny_model_dir: Callable[[str], Path]) -> None:
    check_bf16_logits(tiny_model_dir("qwen3"), "cpu")
