"""Half-precision engines: bfloat16 on CPU, bfloat16 and float16 on CUDA, against transformers
in float32 (close, not equal: half precision rounds differently)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from runtime_service.engine.config import EngineConfig
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.reference import hf_step_logprobs, run_to_completion
from tests.runtime_service.test_engine_parity import mixed_prompts


def check_half(path: Path, device: str, dtype: str) -> None:
    prompts = mixed_prompts(path, 8, seed=41, max_len=60)
    engine = LLMEngine(
        EngineConfig(
            model=path,
            device=device,
            dtype=dtype,
            num_kv_blocks=64,
            max_model_len=256,
            max_num_batched_tokens=64,
        )
    )
    assert engine.model.dtype == getattr(torch, dtype)
    assert engine.runner.kv_caches[0].dtype == getattr(torch, dtype)
    params = SamplingParams(temperature=0, max_tokens=1, logprobs=5)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    outputs = run_to_completion(engine)
    for i, p in enumerate(prompts):
        entry = outputs[f"r{i}"].logprobs[0]
        reference = hf_step_logprobs(path, p, 1)[0]
        ids = torch.tensor([t for t, _ in entry.top])
        ours = torch.tensor([v for _, v in entry.top])
        torch.testing.assert_close(ours, reference[ids], atol=0.08, rtol=0.02)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_bfloat16_on_cpu(arch: str, tiny_model_dir: Callable[[str], Path]) -> None:
    check_half(tiny_model_dir(arch), "cpu", "bfloat16")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_cuda(dtype: str, tiny_model_dir: Callable[[str], Path]) -> None:
    check_half(tiny_model_dir("mistral"), "cuda", dtype)
