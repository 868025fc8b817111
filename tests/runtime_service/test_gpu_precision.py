"""bfloat16 on CUDA against transformers' bfloat16: teacher-forced logits within 2e-2.
(test_cpu_bf16.py runs the same check on the CPU.)

The measure is ||ours - ref|| / ||ref|| over the logits of every position (prefill, eager
path) and over the top-20 log-probabilities of every decoded token (decode steps replayed
as CUDA graphs, fused kernels, batched sampler), both against transformers running the same
weights in bfloat16 on the same GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from runtime_service.engine.config import EngineConfig
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.params import SamplingParams
from runtime_service.models.scoring import sequence_logits
from tests.runtime_service.reference import run_to_completion
from tests.runtime_service.test_engine_parity import mixed_prompts

pytestmark = pytest.mark.gpu
BOUND = 2e-2


def relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).norm() / ref.float().norm())


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_bf16_logits_match_transformers(arch: str, tiny_model_dir: Callable[[str], Path]) -> None:
    check_bf16_logits(tiny_model_dir(arch), "cuda")


def check_bf16_logits(path: Path, device: str) -> None:
    """The engine in bfloat16 on `device` against transformers' bfloat16 there (see above)."""
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    engine = LLMEngine(
        EngineConfig(
            model=path,
            dtype="bfloat16",
            device=device,
            num_kv_blocks=256,
            max_model_len=512,
            max_num_seqs=16,
        )
    )
    prompts = mixed_prompts(path, 8, seed=51, max_len=100)
    for p in prompts[:3]:  # prefill: every position
        ours = sequence_logits(engine.model, p)
        with torch.no_grad():
            ref = hf(torch.tensor([p], device=device)).logits[0].float()
        assert relative(ours, ref) <= BOUND
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=20)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    outputs = run_to_completion(engine)
    ours_all, ref_all = [], []
    for i, p in enumerate(prompts):
        out = outputs[f"r{i}"]
        with torch.no_grad():
            full = torch.tensor([p + out.token_ids], device=device)
            ref = hf(full).logits[0, len(p) - 1 : -1].float().log_softmax(-1)
        for step, entry in enumerate(out.logprobs):
            ids = torch.tensor([t for t, _ in entry.top], device=device)
            ours_all.append(torch.tensor([v for _, v in entry.top]))
            ref_all.append(ref[step, ids].cpu())
    assert relative(torch.cat(ours_all), torch.cat(ref_all)) <= BOUND
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
