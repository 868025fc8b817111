"""AsyncLLM: streaming equals offline results; early exit aborts; slow readers get coalesced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llmserve.errors import InvalidArgument
from runtime_service.engine.async_llm import AsyncLLM
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.reference import assert_pool_idle, hf_greedy
from tests.runtime_service.test_engine_parity import mixed_prompts

PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture
def llm(tiny_model_dir: Callable[[str], Path]):
    engine = AsyncLLM(
        EngineConfig(
            model=tiny_model_dir("qwen2"),
            dtype="float32",
            num_kv_blocks=128,
            max_num_batched_tokens=64,
            max_model_len=256,
        )
    )
    yield engine
    engine.shutdown()


async def collect(
    llm: AsyncLLM, prompt: list[int], params: SamplingParams = PARAMS, delay: float = 0.0
) -> tuple[list[int], str, int]:
    tokens, text, messages = [], "", 0
    async for out in llm.generate(prompt, params):
        tokens += out.token_ids
        text += out.text
        messages += 1
        if delay:
            await asyncio.sleep(delay)
    return tokens, text, messages


def wait_idle(llm: AsyncLLM, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while llm.engine.has_unfinished_requests and time.monotonic() < deadline:
        time.sleep(0.01)


def test_concurrent_streams_equal_transformers(llm: AsyncLLM, tiny_model_dir) -> None:
    path = tiny_model_dir("qwen2")
    prompts = mixed_prompts(path, 12, seed=31, max_len=80)

    async def main() -> list[tuple[list[int], str, int]]:
        return await asyncio.gather(*(collect(llm, p) for p in prompts))

    results = asyncio.run(main())
    for prompt, (tokens, _text, messages) in zip(prompts, results, strict=True):
        assert tokens == hf_greedy(path, prompt, 24)
        assert messages > 1
    wait_idle(llm)
    assert_pool_idle(llm.engine)


def test_leaving_a_stream_aborts_the_request(llm: AsyncLLM, tiny_model_dir) -> None:
    path = tiny_model_dir("qwen2")
    prompts = mixed_prompts(path, 6, seed=32, max_len=60)
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def quit_early(prompt: list[int]) -> int:
        seen = 0
        async for out in llm.generate(prompt, long):
            seen += len(out.token_ids)
            if seen >= 3:
                break
        return seen

    async def main() -> None:
        quitters = [asyncio.create_task(quit_early(p)) for p in prompts[:3]]
        finishers = [asyncio.create_task(collect(llm, p)) for p in prompts[3:]]
        await asyncio.gather(*quitters)
        results = await asyncio.gather(*finishers)
        for prompt, (tokens, _, _) in zip(prompts[3:], results, strict=True):
            assert tokens == hf_greedy(path, prompt, 24)

    asyncio.run(main())
    wait_idle(llm)
    assert_pool_idle(llm.engine)


def test_slow_reader_gets_coalesced_messages(llm: AsyncLLM, tiny_model_dir) -> None:
    path = tiny_model_dir("qwen2")
    prompt = mixed_prompts(path, 1, seed=33, max_len=30)[0]
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)

    async def main() -> tuple[list[int], str, int]:
        return await collect(llm, prompt, params, delay=0.05)

    tokens, _text, messages = asyncio.run(main())
    assert tokens == hf_greedy(path, prompt, 60)
    assert messages < len(tokens) / 2  # several tokens per message


def test_bad_input_fails_alone(llm: AsyncLLM, tiny_model_dir) -> None:
    path = tiny_model_dir("qwen2")
    prompt = mixed_prompts(path, 1, seed=34, max_len=30)[0]

    async def main() -> None:
        good = asyncio.create_task(collect(llm, prompt))
        with pytest.raises(InvalidArgument, match="prompt must not be empty"):
            llm.add_request([], PARAMS)
        with pytest.raises(InvalidArgument, match="max_tokens must be >= 1"):
            llm.add_request(prompt, SamplingParams(max_tokens=0))
        tokens, _, _ = await good
        assert tokens == hf_greedy(path, prompt, 24)

    asyncio.run(main())
