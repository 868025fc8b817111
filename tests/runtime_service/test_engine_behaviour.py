"""Preemption, prefix reuse, seeded sampling, stop conditions and bad input, end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llmserve.errors import InvalidArgument
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.inputs import ChatPrompt
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.reference import (
    assert_pool_idle,
    hf_greedy,
    hf_tokenizer,
    run_to_completion,
)
from tests.runtime_service.test_engine_parity import mixed_prompts

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def make_engine(path: Path, **settings: object) -> LLMEngine:
    base: dict = dict(
        model=path,
        dtype="float32",
        max_num_batched_tokens=128,
        num_kv_blocks=128,
        max_model_len=256,
    )
    base.update(settings)
    return LLMEngine(EngineConfig(**base))


def test_small_pool_preempts_and_still_matches(tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir("llama")
    prompts = mixed_prompts(path, 16, seed=21, max_len=100)
    # 17 blocks of 16 tokens: one 256-token sequence fits, sixteen requests do not.
    for prefix in (True, False):
        engine = make_engine(path, num_kv_blocks=17, enable_prefix_caching=prefix)
        for i, p in enumerate(prompts):
            engine.add_request(f"r{i}", p, GREEDY)
        outputs = run_to_completion(engine)
        assert engine.scheduler.num_preemptions > 0, "the pool never ran out"
        for i, p in enumerate(prompts):
            assert outputs[f"r{i}"].token_ids == hf_greedy(path, p, 24), f"r{i}"
            assert outputs[f"r{i}"].finish_reason == "length"
        assert_pool_idle(engine)


def test_shared_prefix_reuses_blocks_and_output(tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir("qwen2")
    tok = hf_tokenizer(path)
    from llmserve.testing.tiny_models import CORPUS

    shared = tok(CORPUS.read_text()[:2000], add_special_tokens=False)["input_ids"][:150]
    first, second = [*shared, 11, 12, 13], [*shared, 21, 22]
    engine = make_engine(path)
    engine.add_request("a", first, GREEDY)
    run_to_completion(engine)
    hits_before = engine.block_manager.prefix_cache_hits
    engine.add_request("b", second, GREEDY)
    out = run_to_completion(engine)["b"]
    bs = engine.block_manager.block_size
    assert out.num_cached_tokens == (len(shared) // bs) * bs
    assert engine.block_manager.prefix_cache_hits - hits_before == out.num_cached_tokens > 0
    uncached = make_engine(path, enable_prefix_caching=False)
    uncached.add_request("b", second, GREEDY)
    assert run_to_completion(uncached)["b"].token_ids == out.token_ids
    assert out.token_ids == hf_greedy(path, second, 24)
    assert_pool_idle(engine)
    assert engine.block_manager.num_cached_free_blocks > 0  # the prefix stays cached


def test_seeded_request_is_batch_invariant(tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir("mistral")
    prompt = mixed_prompts(path, 1, seed=2, max_len=40)[0]
    seeded = SamplingParams(
        temperature=0.9, top_p=0.95, top_k=50, seed=1234, max_tokens=32, ignore_eos=True
    )
    alone = make_engine(path)
    alone.add_request("x", prompt, seeded)
    expected = run_to_completion(alone)["x"].token_ids
    batch = make_engine(path)
    others = mixed_prompts(path, 12, seed=9, max_len=80)
    for i, p in enumerate(others[:6]):
        batch.add_request(f"o{i}", p, SamplingParams(temperature=1.0, max_tokens=40))
    batch.add_request("x", prompt, seeded)
    for i, p in enumerate(others[6:]):
        batch.add_request(f"p{i}", p, SamplingParams(temperature=0.7, seed=i, max_tokens=20))
    outputs = run_to_completion(batch)
    assert outputs["x"].token_ids == expected
    # A different seed gives a different sample: the seed matters.
    other = make_engine(path)
    other.add_request("x", prompt, SamplingParams(**{**seeded_kwargs(seeded), "seed": 99}))
    assert run_to_completion(other)["x"].token_ids != expected
    assert_pool_idle(batch)


def seeded_kwargs(p: SamplingParams) -> dict:
    return {name: getattr(p, name) for name in p.__slots__}


def test_stop_strings_and_tokens(tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir("qwen3")
    prompt = mixed_prompts(path, 1, seed=4, max_len=30)[0]
    engine = make_engine(path)
    engine.add_request("free", prompt, GREEDY)
    free = run_to_completion(engine)["free"]
    assert len(free.text) > 10
    stop = free.text[5:8]
    engine.add_request(
        "s", prompt, SamplingParams(temperature=0, max_tokens=24, stop=[stop], ignore_eos=True)
    )
    engine.add_request(
        "t",
        prompt,
        SamplingParams(
            temperature=0, max_tokens=24, stop_token_ids=[free.token_ids[3]], ignore_eos=True
        ),
    )
    outputs = run_to_completion(engine)
    s, t = outputs["s"], outputs["t"]
    assert s.finish_reason == "stop" and s.stop_reason == stop
    assert s.text == free.text[: free.text.index(stop)]
    assert t.finish_reason == "stop" and t.stop_reason == free.token_ids[3]
    assert t.token_ids == free.token_ids[: free.token_ids.index(free.token_ids[3]) + 1]
    assert_pool_idle(engine)


def test_min_tokens_holds_back_eos(tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir("qwen3")
    eos = hf_tokenizer(path).eos_token_id
    engine = make_engine(path)
    prompt = mixed_prompts(path, 1, seed=4, max_len=30)[0]
    params = SamplingParams(
        temperature=0, max_tokens=30, min_tokens=10, stop_token_ids=[hf_greedy(path, prompt, 1)[0]]
    )  # would stop at once without min_tokens
    engine.add_request("m", prompt, params)
    out = run_to_completion(engine)["m"]
    assert len(out.token_ids) >= 10
    assert eos not in out.token_ids[:10]


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ("", SamplingParams(), "prompt.text must not be empty"),
        ([], None, "prompt must not be empty"),
        (list(range(3, 300)), None, "prompt has 297 tokens; at most 255 fit"),
        ([5, 99999], None, "prompt.token_ids[1] = 99999 is outside the vocabulary"),
        (
            [5] * 100,
            SamplingParams(max_tokens=200),
            "prompt (100 tokens) plus max_tokens (200) exceed max_model_len (256)",
        ),
        (
            ChatPrompt([{"role": "user", "content": "hi"}], truncate_history=True),
            SamplingParams(max_tokens=256),
            "max_tokens (256) must be below max_model_len (256)",
        ),
    ],
)
def test_bad_prompts_are_refused_and_the_engine_keeps_serving(
    prompt: object,
    params: SamplingParams | None,
    message: str,
    tiny_model_dir: Callable[[str], Path],
) -> None:
    path = tiny_model_dir("qwen2")
    engine = make_engine(path)
    engine.add_request("good", [5, 6, 7], GREEDY)
    engine.step()
    with pytest.raises(InvalidArgument) as err:
        engine.add_request("bad", prompt, params)
    assert message in str(err.value)
    assert run_to_completion(engine)["good"].token_ids[:1] == hf_greedy(path, [5, 6, 7], 24)[:1]
    assert_pool_idle(engine)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be >= 1, got 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"temperature": -0.5}, "temperature must be a finite number >= 0, got -0.5"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"min_p": 2.0}, "min_p must be in [0, 1], got 2.0"),
        ({"logprobs": 21}, "logprobs must be in [0, 20], got 21"),
        ({"presence_penalty": 3.0}, "presence_penalty must be in [-2, 2], got 3.0"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, got 0.0"),
        ({"stop": ["x"] * 17}, "stop may hold at most 16 strings, got 17"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens (5) must be <= max_tokens (2)"),
    ],
)
def test_bad_sampling_params_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        SamplingParams(**kwargs)
    assert message in str(err.value)


def test_chat_history_is_truncated_oldest_first(tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir("qwen3")
    engine = make_engine(path)
    tok = hf_tokenizer(path)
    turns = []
    for i in range(12):
        turns += [
            {"role": "user", "content": f"question {i} about the harbor and the bridge"},
            {"role": "assistant", "content": f"answer {i} about boats, bread and rain"},
        ]
    messages = [
        {"role": "system", "content": "Be brief."},
        *turns,
        {"role": "user", "content": "last question"},
    ]
    with pytest.raises(InvalidArgument, match=r"prompt has \d+ tokens; at most 255 fit"):
        engine.inputs(ChatPrompt(messages), 40)
    ids = engine.inputs(ChatPrompt(messages, truncate_history=True), 40)
    assert len(ids) <= 256 - 40
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("last question<|im_end|>\n<|im_start|>assistant\n")
    assert "question 0 " not in text and "question 11 " in text  # oldest turns went first
    kept = [m for m in messages if m["content"] in text]
    assert kept[1]["role"] == "user"  # the kept history starts on a user turn
    # The longest suffix of whole turns that fits, not less.
    first_kept = messages.index(kept[1])
    longer = [messages[0], *messages[first_kept - 2 :]]
    assert len(engine.inputs.render_chat(longer, True)) > 256 - 40
