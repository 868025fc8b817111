"""Defaults that work: the offline API with no settings serves the real model on a CPU."""

from __future__ import annotations

from pathlib import Path

from runtime_service.engine.llm import LLM
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.reference import hf_greedy


def test_llm_with_no_settings_serves_smollm2(smollm2_dir: Path) -> None:
    llm = LLM(str(smollm2_dir))
    engine = llm.engine
    # The pool holds at least one sequence of the model's whole window (8,192 tokens).
    assert engine.max_model_len == 8192
    assert engine.block_manager.num_blocks * engine.block_manager.block_size >= 8192
    prompt = engine.inputs("The capital of France is")
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8))[0]
    assert out.token_ids == hf_greedy(smollm2_dir, prompt, 8)
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
