"""Greedy outputs equal transformers' generate, token for token, under every batching mode."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from runtime_service.engine.config import EngineConfig
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.reference import (
    assert_pool_idle,
    hf_greedy,
    hf_step_logprobs,
    hf_tokenizer,
    run_to_completion,
)

NUM_REQUESTS = 16
TINY = ("llama", "mistral", "qwen2", "qwen3")
MODES = list(itertools.product([True, False], [True, False]))  # (chunked, prefix caching)


def mixed_prompts(path: Path, n: int, seed: int, max_len: int) -> list[list[int]]:
    """n prompts of mixed lengths (1..max_len) cut from the calibration text, some sharing
    prefixes with each other so the prefix cache has work."""
    from llmserve.testing.tiny_models import CORPUS

    ids = hf_tokenizer(path)(CORPUS.read_text(), add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        length = rng.choice([1, 2, 7, 16, 17, 33, rng.randint(3, max_len)])
        start = 0 if i % 4 == 0 else rng.randrange(len(ids) - max_len)
        prompts.append(ids[start : start + length])
    return prompts


def engine_for(path: Path, chunked: bool, prefix: bool, **overrides: object) -> LLMEngine:
    settings: dict = dict(
        model=path,
        dtype="float32",
        enable_chunked_prefill=chunked,
        enable_prefix_caching=prefix,
        max_num_batched_tokens=64 if chunked else 512,
        num_kv_blocks=160,
        max_model_len=512,
    )
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def check_parity(engine: LLMEngine, path: Path, prompts: list[list[int]], max_tokens: int):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=0)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    outputs = run_to_completion(engine)
    for i, prompt in enumerate(prompts):
        expected = hf_greedy(path, prompt, max_tokens)
        assert outputs[f"r{i}"].token_ids == expected, f"request {i} ({len(prompt)} tokens)"
    assert_pool_idle(engine)
    return outputs


@pytest.mark.parametrize(("chunked", "prefix"), MODES)
@pytest.mark.parametrize("arch", TINY)
def test_tiny_models_match_transformers(
    arch: str, chunked: bool, prefix: bool, tiny_model_dir: Callable[[str], Path]
) -> None:
    path = tiny_model_dir(arch)
    prompts = mixed_prompts(path, NUM_REQUESTS, seed=TINY.index(arch), max_len=120)
    engine = engine_for(path, chunked, prefix)
    check_parity(engine, path, prompts, max_tokens=20)
    if chunked:
        assert engine.scheduler.max_num_batched_tokens < max(len(p) for p in prompts) + 16


@pytest.mark.parametrize(("chunked", "prefix"), MODES)
def test_smollm2_matches_transformers(chunked: bool, prefix: bool, smollm2_dir: Path) -> None:
    tok = hf_tokenizer(smollm2_dir)
    questions = [
        "What is the capital of France?",
        "Name three primary colors.",
        "Write a haiku about the sea.",
        "What is 12 times 12?",
    ]
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    prompts += mixed_prompts(smollm2_dir, NUM_REQUESTS - len(prompts), seed=7, max_len=200)
    engine = engine_for(smollm2_dir, chunked, prefix, num_kv_blocks=256)
    outputs = check_parity(engine, smollm2_dir, prompts, max_tokens=16)
    assert "Paris" in outputs["r0"].text


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_logits_match_transformers(arch: str, tiny_model_dir: Callable[[str], Path]) -> None:
    """The engine's logprobs (raw log-softmax) at every step equal transformers' within fp32
    tolerance, for batched requests."""
    path = tiny_model_dir(arch)
    prompts = mixed_prompts(path, 8, seed=3, max_len=60)
    engine = engine_for(path, True, True)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=5)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    outputs = run_to_completion(engine)
    for i, p in enumerate(prompts):
        reference = hf_step_logprobs(path, p, 12)
        for step, entry in enumerate(outputs[f"r{i}"].logprobs):
            ids = torch.tensor([t for t, _ in entry.top])
            ours = torch.tensor([v for _, v in entry.top])
            torch.testing.assert_close(ours, reference[step][ids], atol=2e-5, rtol=1e-5)
            assert entry.top[0][0] == int(reference[step].argmax())


def test_requests_join_and_leave_mid_run(tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir("qwen2")
    prompts = mixed_prompts(path, 24, seed=11, max_len=90)
    max_tokens = [5 + (i * 7) % 19 for i in range(len(prompts))]
    engine = engine_for(path, True, True, max_num_seqs=6)
    outputs: dict[str, list[int]] = {}
    finished: set[str] = set()
    pending = list(enumerate(prompts))
    aborted = {"r3", "r10"}
    step = 0
    while pending or engine.has_unfinished_requests:
        if pending and step % 3 == 0:  # a few arrive every third step
            for i, p in pending[:4]:
                params = SamplingParams(temperature=0, max_tokens=max_tokens[i], ignore_eos=True)
                engine.add_request(f"r{i}", p, params)
            pending = pending[4:]
        if step == 8:
            engine.abort(aborted)
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
            if out.finished:
                finished.add(out.request_id)
                assert out.finish_reason == ("abort" if out.request_id in aborted else "length")
        step += 1
    assert finished == {f"r{i}" for i in range(len(prompts))}
    for i, p in enumerate(prompts):
        if f"r{i}" not in aborted:
            assert outputs[f"r{i}"] == hf_greedy(path, p, max_tokens[i]), f"r{i}"
    assert_pool_idle(engine)


def test_eos_ends_a_request_like_transformers(tiny_model_dir: Callable[[str], Path]) -> None:
    """Without ignore_eos, a request stops at EOS exactly where transformers does."""
    path = tiny_model_dir("qwen3")
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 120, (16,), generator=g).tolist()
    prompts = [torch.randint(3, 1000, (n,), generator=g).tolist() for n in lengths]
    engine = engine_for(path, True, True)
    params = SamplingParams(temperature=0, max_tokens=40)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    outputs = run_to_completion(engine)
    stopped = 0
    for i, p in enumerate(prompts):
        expected = hf_greedy(path, p, 40, stop_at_eos=True)
        assert outputs[f"r{i}"].token_ids == expected
        if outputs[f"r{i}"].finish_reason == "stop":
            stopped += 1
            assert outputs[f"r{i}"].stop_reason in engine.eos_token_ids
    assert stopped > 0, "no prompt reached EOS: the test exercises nothing"
    assert_pool_idle(engine)
