"""Async scheduling (step n+1 launched before step n's tokens reach the host) gives exactly
the outputs of the synchronous engine: greedy parity with transformers, and the same tokens,
logprobs and finish reasons for every sampling setting, through preemption, stops that land
while the next step is already queued, aborts and prefix reuse of generated tokens.

On the CPU nothing overlaps, but every code path (placeholders, their device-side fix-up,
late stops, deferred prefix hashing) is the one the GPU runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runtime_service.engine.config import EngineConfig
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.reference import (
    assert_pool_idle,
    hf_greedy,
    merge_outputs,
    run_to_completion,
)
from tests.runtime_service.test_engine_parity import mixed_prompts

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def engine(path: Path, async_scheduling: bool, **settings: object) -> LLMEngine:
    base: dict = dict(
        model=path,
        dtype="float32",
        max_num_batched_tokens=64,
        num_kv_blocks=128,
        max_model_len=256,
        async_scheduling=async_scheduling,
    )
    base.update(settings)
    return LLMEngine(EngineConfig(**base))


@pytest.mark.parametrize("num_kv_blocks", [128, 17])  # 17: the pool runs out, preempting
def test_async_greedy_equals_transformers(
    num_kv_blocks: int, tiny_model_dir: Callable[[str], Path]
) -> None:
    path = tiny_model_dir("llama")
    prompts = mixed_prompts(path, 12, seed=5, max_len=100)
    llm = engine(path, True, num_kv_blocks=num_kv_blocks)
    assert llm.core.async_scheduling
    for i, p in enumerate(prompts):
        llm.add_request(f"r{i}", p, GREEDY)
    outputs = run_to_completion(llm)
    for i, p in enumerate(prompts):
        assert outputs[f"r{i}"].token_ids == hf_greedy(path, p, 24), f"r{i}"
        assert outputs[f"r{i}"].finish_reason == "length"
    if num_kv_blocks == 17:
        assert llm.scheduler.num_preemptions > 0
    assert_pool_idle(llm)
    # Second round: prompts that continue the first round's outputs reuse blocks filled with
    # generated tokens (hashed only once their ids were known) and still match.
    follow = [p + outputs[f"r{i}"].token_ids for i, p in enumerate(prompts[:6])]
    for i, p in enumerate(follow):
        llm.add_request(f"f{i}", p, GREEDY)
    outputs = run_to_completion(llm)
    for i, p in enumerate(follow):
        assert outputs[f"f{i}"].token_ids == hf_greedy(path, p, 24), f"f{i}"
    assert_pool_idle(llm)


def mixed_params(stop_token: int) -> list[SamplingParams]:
    return [
        GREEDY,
        SamplingParams(temperature=0.8, seed=1, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=1.0, top_p=0.9, top_k=20, seed=2, max_tokens=17),
        SamplingParams(temperature=0, repetition_penalty=1.3, frequency_penalty=0.5,
                       max_tokens=19, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=16, logprobs=3, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_token]),
        SamplingParams(temperature=0, max_tokens=24, min_tokens=6,
                       stop_token_ids=[stop_token], seed=3),
        SamplingParams(temperature=0.7, min_p=0.05, seed=4, max_tokens=1),
    ]  # fmt: skip


def drive(
    llm: LLMEngine,
    prompts: list[list[int]],
    params: list[SamplingParams],
    abort: str = "",
    abort_step: int = 5,
) -> dict:
    """Runs the requests (params in turn) to completion, aborting `abort` after
    `abort_step` steps; each request's merged output. Every KV block is back after."""
    for i, p in enumerate(prompts):
        llm.add_request(f"r{i}", p, params[i % len(params)])
    merged: dict = {}
    steps = 0
    while llm.has_unfinished_requests:
        merge_outputs(merged, llm.step())
        steps += 1
        if steps == abort_step and abort:
            llm.abort([abort])
    assert_pool_idle(llm)
    return merged


def run(llm: LLMEngine, prompts: list[list[int]], params: list[SamplingParams], abort: str = ""):
    merged = drive(llm, prompts, params, abort)
    return {
        rid: (o.token_ids, o.finish_reason, [(lp.token_id, lp.top) for lp in o.logprobs or []])
        for rid, o in merged.items()
    }


@pytest.mark.parametrize("num_kv_blocks", [128, 20])
def test_async_equals_sync_for_every_sampling_setting(
    num_kv_blocks: int, tiny_model_dir: Callable[[str], Path]
) -> None:
    path = tiny_model_dir("qwen2")
    prompts = mixed_prompts(path, 16, seed=9, max_len=80)
    # A stop token the greedy answer of prompt 5 meets early, so its stop lands while the
    # request's next step is already queued.
    stop_token = hf_greedy(path, prompts[5], 24)[3]
    params = mixed_params(stop_token)
    sync = run(engine(path, False, num_kv_blocks=num_kv_blocks), prompts, params, abort="r9")
    asyn = run(engine(path, True, num_kv_blocks=num_kv_blocks), prompts, params, abort="r9")
    # An abort between steps finds async one token behind (its last token was in flight).
    aborted_sync, aborted_async = sync.pop("r9"), asyn.pop("r9")
    assert aborted_sync[1] == aborted_async[1] == "abort"
    assert aborted_sync[0][: len(aborted_async[0])] == aborted_async[0]
    # Tokens and reasons are equal; logprobs to float32 rounding (a request preempted at
    # another step is recomputed in a batch of another shape).
    assert {k: v[:2] for k, v in asyn.items()} == {k: v[:2] for k, v in sync.items()}
    for rid, (_, _, logprobs) in sync.items():
        for (token, top), (token_a, top_a) in zip(logprobs, asyn[rid][2], strict=True):
            assert token == token_a and [t for t, _ in top] == [t for t, _ in top_a], rid
            assert [v for _, v in top] == pytest.approx([v for _, v in top_a], abs=1e-4), rid
    assert sync["r5"][1] == "stop" and len(sync["r5"][0]) <= 4  # EOS may come first
