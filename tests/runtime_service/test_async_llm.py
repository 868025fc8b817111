"""AsyncLLM: streaming equals offline results; early exit aborts; slow readers get coalesced."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmserve.errors import InvalidArgument, Unavailable
from runtime_service.engine.async_llm import AsyncLLM
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.reference import hf_greedy
from tests.runtime_service.test_engine_parity import mixed_prompts

PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def config(path: Path) -> EngineConfig:
    return EngineConfig(
        model=path, dtype="float32", num_kv_blocks=128, max_num_batched_tokens=64, max_model_len=256
    )


@pytest.fixture
def llm(tiny_model_dir: Callable[[str], Path]):
    """The core on a thread of this process (the conftest checks its pool at the end)."""
    engine = AsyncLLM(config(tiny_model_dir("qwen2")), in_process=True)
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
    """Until the core reports nothing running or waiting and every block free."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = llm.call("stats").result(timeout)
        if s.num_running == s.num_waiting == 0 and s.num_free_blocks == s.num_blocks:
            return
        time.sleep(0.01)
    raise AssertionError(f"engine not idle: {llm.stats()}")


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


def test_leaving_a_stream_aborts_the_request(llm: AsyncLLM, tiny_model_dir) -> None:
    path = tiny_model_dir("qwen2")
    prompts = mixed_prompts(path, 6, seed=32, max_len=60)
    long = SamplingParams(temperature=0, max_tokens=180, ignore_eos=True)

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


def test_engine_core_in_its_own_process(tiny_model_dir: Callable[[str], Path]) -> None:
    """The serving arrangement: the core in a spawned process, this side detokenizing."""
    path = tiny_model_dir("llama")
    llm = AsyncLLM(config(path))
    try:
        prompts = mixed_prompts(path, 8, seed=35, max_len=60)

        async def main() -> list[tuple[list[int], str, int]]:
            return await asyncio.gather(*(collect(llm, p) for p in prompts))

        for prompt, (tokens, text, _) in zip(prompts, asyncio.run(main()), strict=True):
            assert tokens == hf_greedy(path, prompt, 24)
            assert (
                text
                == llm.tokenizer.decode(prompt + tokens, skip_special_tokens=True)[
                    len(llm.tokenizer.decode(prompt, skip_special_tokens=True)) :
                ]
            )
        wait_idle(llm)
    finally:
        llm.shutdown()


def test_a_core_that_cannot_load_raises_in_the_frontend(tmp_path: Path) -> None:
    from llmserve.errors import NotFound

    with pytest.raises(NotFound, match="does not exist"):
        AsyncLLM(config(tmp_path / "missing"))


async def fails_everything(llm: AsyncLLM, stream: Any, died: Any, match: str | None = None) -> None:
    """A dead engine: the running stream, a new request and a call each fail with
    Unavailable at once, and the death callback has run."""
    with pytest.raises(Unavailable, match=match):
        async for _ in llm.iterate(stream):
            pass
    assert died.is_set()
    with pytest.raises(Unavailable):
        await llm.submit([1, 2, 3], PARAMS)
    with pytest.raises(Unavailable):
        llm.call("stats").result(timeout=30)


def test_calls_after_the_core_died_fail_at_once(tiny_model_dir: Callable[[str], Path]) -> None:
    """Issue 12, item 4: once the core process is gone, a stream already running, a new request
    and a call to the core each fail with Unavailable at once (none waits for an answer that
    cannot come), and the death callback has run before any of them is refused."""
    import multiprocessing
    import os
    import signal
    import threading

    llm = AsyncLLM(config(tiny_model_dir("llama")))
    died = threading.Event()
    llm.on_dead(lambda reason: died.set())
    try:

        async def main() -> None:
            long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
            stream = llm.add_request([1, 2, 3], long)
            first = await stream.get()  # the core is stepping this request
            assert first.token_ids
            (core,) = [p for p in multiprocessing.active_children() if "engine-core" in p.name]
            assert core.pid is not None
            os.kill(core.pid, signal.SIGKILL)
            await fails_everything(llm, stream, died)
            assert llm.num_streams == 0

        asyncio.run(main())
    finally:
        llm.shutdown()


def test_a_call_abandoned_by_its_caller_leaves_the_engine_serving(
    llm: AsyncLLM, tiny_model_dir
) -> None:
    """A call to the core whose caller gives up (a GetStatus past its deadline, a gateway that
    closes its channel) must not stop the thread that delivers every step's tokens and every
    reply. It did: asyncio.wrap_future cancelled the call's future, and the core's reply then
    raised InvalidStateError there (CI saw a runtime answer nothing more)."""
    path = tiny_model_dir("qwen2")
    prompt = mixed_prompts(path, 1, seed=36, max_len=30)[0]

    async def main() -> None:
        assert not llm.call("stats").cancel()  # sent: it runs, whoever waits for it
        for _ in range(20):  # callers that give up while the reply is on its way
            waiting = asyncio.ensure_future(llm.list_adapters())
            await asyncio.sleep(0)  # the call is sent; its reply is not in yet
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        tokens, _, _ = await asyncio.wait_for(collect(llm, prompt), timeout=60)
        assert tokens == hf_greedy(path, prompt, 24)
        assert (await asyncio.wait_for(llm.list_adapters(), timeout=60)) == []

    asyncio.run(main())
    assert llm._receiver.is_alive()
    wait_idle(llm)


def test_a_fault_in_the_output_thread_fails_the_engine_not_silently(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    """Should the thread that delivers the core's output ever raise, the engine is declared
    dead (health goes first, through on_dead), its streams and calls fail with Unavailable and
    its core stops: never a server that looks well and answers nothing."""
    import threading

    llm = AsyncLLM(config(tiny_model_dir("llama")))
    died = threading.Event()
    llm.on_dead(lambda reason: died.set())
    process = llm.processor.process

    def faulty(outputs: Any) -> Any:  # the injected defect, after the first step
        if first_seen.is_set():
            raise RuntimeError("injected")
        return process(outputs)

    first_seen = threading.Event()
    llm.processor.process = faulty  # type: ignore[method-assign]
    try:

        async def main() -> None:
            long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)
            stream = llm.add_request([1, 2, 3], long)
            assert (await stream.get()).token_ids
            first_seen.set()
            await fails_everything(llm, stream, died, "output thread failed")

        asyncio.run(main())
    finally:
        llm.shutdown()
    assert not llm._receiver.is_alive()
