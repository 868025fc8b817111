"""References from transformers (not our code): greedy generate and per-step logits, cached."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.outputs import Completion, RequestOutput


@functools.cache
def hf_model(path: Path) -> AutoModelForCausalLM:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


@functools.cache
def hf_tokenizer(path: Path) -> AutoTokenizer:
    return AutoTokenizer.from_pretrained(path)


@functools.cache
def _greedy(path: Path, prompt: tuple[int, ...], max_new_tokens: int, stop_at_eos: bool):
    model = hf_model(path)
    config = model.generation_config
    saved = config.eos_token_id
    if not stop_at_eos:
        config.eos_token_id = None  # generate through EOS, as ignore_eos does
    try:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            )
    finally:
        config.eos_token_id = saved
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [step[0].float().log_softmax(-1) for step in out.logits]
    return tokens, logprobs


def hf_greedy(
    path: Path, prompt: list[int], max_new_tokens: int, stop_at_eos: bool = False
) -> list[int]:
    """transformers' greedy continuation of `prompt` (through EOS unless stop_at_eos)."""
    return _greedy(path, tuple(prompt), max_new_tokens, stop_at_eos)[0]


def hf_step_logprobs(path: Path, prompt: list[int], max_new_tokens: int) -> list[torch.Tensor]:
    """log_softmax of transformers' logits at each generated position (greedy, through EOS)."""
    return _greedy(path, tuple(prompt), max_new_tokens, False)[1]


def merge_outputs(merged: dict[str, RequestOutput], outputs: list[RequestOutput]) -> None:
    """Adds one step's outputs to each request's merged output."""
    for out in outputs:
        if out.request_id in merged:
            merged[out.request_id].merge(out)
        else:
            merged[out.request_id] = out


def run_to_completion(engine: LLMEngine) -> dict[str, RequestOutput]:
    """Steps until idle; returns each request's merged output."""
    merged: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests:
        merge_outputs(merged, engine.step())
    return merged


def assert_pool_idle(engine: LLMEngine) -> None:
    """Every KV block is back in the pool and no request is left."""
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks, f"{bm.num_blocks - bm.num_free_blocks} leaked"
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert engine.scheduler.num_unfinished == 0
    assert not engine.requests


def tokens_of(completions: list[Completion]) -> list[list[int]]:
    return [c.token_ids for c in completions]
