"""Adapters through AsyncLLM: loaded while other requests stream, unloaded with and without
waiting, loaded on first use — outputs equal transformers + PEFT. The core runs on a thread
(the conftest checks its pool), and once in its own process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmserve.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime_service.engine.async_llm import AsyncLLM
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.lora_reference import make_adapter, make_adapters, peft_greedy
from tests.runtime_service.reference import hf_greedy
from tests.runtime_service.test_async_llm import wait_idle
from tests.runtime_service.test_engine_parity import mixed_prompts

PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Callable[[str], Path], tmp_path_factory) -> list[Path]:
    path = tiny_model_dir("llama")
    return make_adapters(path, tmp_path_factory.mktemp("llama-adapters"), 4)


def config(path: Path, lora_dir: Path) -> EngineConfig:
    return EngineConfig(
        model=path,
        dtype="float32",
        num_kv_blocks=128,
        max_num_batched_tokens=64,
        max_model_len=256,
        enable_lora=True,
        max_loras=3,
        max_lora_rank=16,
        lora_dir=lora_dir,
    )


@pytest.fixture
def llm(tiny_model_dir: Callable[[str], Path], adapters: list[Path]) -> Iterator[AsyncLLM]:
    engine = AsyncLLM(config(tiny_model_dir("llama"), adapters[0].parent), in_process=True)
    yield engine
    wait_idle(engine)
    engine.shutdown()


async def num_running(llm: AsyncLLM) -> int:
    return (await asyncio.wrap_future(llm.call("stats"))).num_running


async def collect(
    llm: AsyncLLM, prompt: list[int], adapter: str | None, params: SamplingParams = PARAMS
) -> list[int]:
    tokens: list[int] = []
    async for out in llm.generate(prompt, params, adapter=adapter):
        tokens += out.token_ids
    return tokens


def test_adapter_loaded_while_others_stream(
    llm: AsyncLLM, tiny_model_dir: Callable[[str], Path], adapters: list[Path]
) -> None:
    path = tiny_model_dir("llama")
    prompts = mixed_prompts(path, 4, seed=60, max_len=50)
    long = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)

    async def main() -> None:
        await llm.load_adapter("one", adapters[0])
        await llm.load_adapter("two", adapters[1])
        streams = [
            asyncio.create_task(collect(llm, prompts[0], "one", long)),
            asyncio.create_task(collect(llm, prompts[1], "two", long)),
            asyncio.create_task(collect(llm, prompts[2], None, long)),
        ]
        while await num_running(llm) < 3:
            await asyncio.sleep(0.005)
        info = await llm.load_adapter("late", adapters[3])
        assert info.rank == 2 and info.num_requests == 0
        assert not any(s.done() for s in streams), "the streams ended before the load"
        late = await collect(llm, prompts[3], "late")
        assert not all(s.done() for s in streams), "the late request did not overlap them"
        results = await asyncio.gather(*streams)
        assert late == peft_greedy(path, adapters[3], prompts[3], 24)
        assert results[0] == peft_greedy(path, adapters[0], prompts[0], 60)
        assert results[1] == peft_greedy(path, adapters[1], prompts[1], 60)
        assert results[2] == hf_greedy(path, prompts[2], 60)
        names = [(i.name, i.num_requests) for i in await llm.list_adapters()]
        assert names == [("late", 0), ("one", 0), ("two", 0)]

    asyncio.run(main())


def test_unload_waits_for_its_requests(
    llm: AsyncLLM, tiny_model_dir: Callable[[str], Path], adapters: list[Path]
) -> None:
    path = tiny_model_dir("llama")
    prompt = mixed_prompts(path, 1, seed=61, max_len=30)[0]
    long = SamplingParams(temperature=0, max_tokens=220, ignore_eos=True)

    async def state() -> tuple[bool, int]:
        (info,) = await llm.list_adapters()
        return info.unloading, info.num_requests

    async def main() -> None:
        await llm.load_adapter("one", adapters[0])
        stream = asyncio.create_task(collect(llm, prompt, "one", long))
        while not await num_running(llm):
            await asyncio.sleep(0.005)
        with pytest.raises(FailedPrecondition, match="in use by 1 request"):
            await llm.unload_adapter("one")
        # A wait cut short by a deadline withdraws the unload: the adapter serves again.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(llm.unload_adapter("one", wait=True), 0.02)
        assert await state() == (False, 1)
        medium = SamplingParams(temperature=0, max_tokens=80, ignore_eos=True)
        again = asyncio.create_task(collect(llm, prompt, "one", medium))
        while await state() != (False, 2):
            await asyncio.sleep(0.005)
        # Now wait for real: no new requests, done when the last one is.
        unload = asyncio.create_task(llm.unload_adapter("one", wait=True))
        while not (await state())[0]:
            await asyncio.sleep(0.005)
        assert not unload.done() and not stream.done()
        with pytest.raises(FailedPrecondition, match="being unloaded"):
            llm.add_request(prompt, PARAMS, adapter="one")
        assert await again == peft_greedy(path, adapters[0], prompt, 80)
        assert await stream == peft_greedy(path, adapters[0], prompt, 220)
        await asyncio.wait_for(unload, 10)
        assert await llm.list_adapters() == []
        with pytest.raises(InvalidArgument, match="max_lora_rank"):
            await llm.load_adapter("big", adapters[2].parent / "big")

    make_big(path, adapters[2].parent / "big")
    asyncio.run(main())


def make_big(base: Path, out: Path) -> None:
    if not out.exists():
        make_adapter(base, out, rank=32)


def test_first_use_loads_from_lora_dir_off_the_engine_thread(
    llm: AsyncLLM, tiny_model_dir: Callable[[str], Path], adapters: list[Path]
) -> None:
    path = tiny_model_dir("llama")
    prompts = mixed_prompts(path, 3, seed=62, max_len=30)

    async def main() -> None:
        results = await asyncio.gather(
            collect(llm, prompts[0], "adapter1"),
            collect(llm, prompts[1], "adapter1"),
            collect(llm, prompts[2], None),
        )
        assert results[0] == peft_greedy(path, adapters[1], prompts[0], 24)
        assert results[1] == peft_greedy(path, adapters[1], prompts[1], 24)
        assert results[2] == hf_greedy(path, prompts[2], 24)
        assert [i.name for i in await llm.list_adapters()] == ["adapter1"]
        with pytest.raises(NotFound, match="'missing' is not loaded"):
            llm.add_request(prompts[0], PARAMS, adapter="missing")

    asyncio.run(main())


def test_adapters_in_a_core_process(
    tiny_model_dir: Callable[[str], Path], adapters: list[Path]
) -> None:
    """The core in its own process: an adapter read here crosses to it (shared memory), one
    from lora_dir loads on first use, and both answer as transformers + PEFT."""
    path = tiny_model_dir("llama")
    prompts = mixed_prompts(path, 3, seed=63, max_len=30)
    llm = AsyncLLM(config(path, adapters[0].parent), log_format="text")
    try:

        async def main() -> None:
            info = await llm.load_adapter("one", adapters[0])
            assert info.target_modules == ("q_proj", "v_proj") and info.rank == 8
            results = await asyncio.gather(
                collect(llm, prompts[0], "one"),
                collect(llm, prompts[1], "adapter2"),  # first use, from lora_dir
                collect(llm, prompts[2], None),
            )
            assert results[0] == peft_greedy(path, adapters[0], prompts[0], 24)
            assert results[1] == peft_greedy(path, adapters[2], prompts[1], 24)
            assert results[2] == hf_greedy(path, prompts[2], 24)
            assert [i.name for i in await llm.list_adapters()] == ["adapter2", "one"]
            await llm.unload_adapter("one")
            assert [i.name for i in await llm.list_adapters()] == ["adapter2"]

        asyncio.run(main())
        wait_idle(llm)
    finally:
        llm.shutdown()


def test_the_frontend_follows_the_cores_answer_after_its_caller_gave_up(
    tiny_model_dir: Callable[[str], Path], adapters: list[Path]
) -> None:
    """A LoadAdapter or UnloadAdapter past its deadline (its caller cancelled) after the core
    was asked: the core still answers, and what the frontend lets requests name must follow
    that answer. Before, a cancelled load left the adapter in a core slot that no request
    could name (NotFound) and that a second load refused (AlreadyExists). The core here is a
    stand-in whose answers the test gives, so each cancel lands between ask and answer."""
    import concurrent.futures
    import contextlib
    import time

    import torch

    from runtime_service.engine.lora.adapter import AdapterReader
    from runtime_service.engine.lora.frontend import AdapterFrontend
    from runtime_service.models.loader import read_hf_config

    asked: list[tuple[str, concurrent.futures.Future]] = []

    def core(method: str, *args: object) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # as AsyncLLM.call's
        asked.append((method, future))
        return future

    reader = AdapterReader(read_hf_config(tiny_model_dir("llama")), 16, torch.float32)
    frontend = AdapterFrontend(reader, core)

    async def asked_then_given_up(work: Any, count: int) -> None:
        task = asyncio.ensure_future(work)
        deadline = time.monotonic() + 60  # the load asks from a worker thread; bounds a hang
        while len(asked) < count:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def main() -> None:
        await asked_then_given_up(frontend.load("one", adapters[0]), 1)
        assert asked[0][0] == "register_adapter" and "one" not in frontend.loaded
        asked[0][1].set_result(object())  # the core registered it after all
        assert "one" in frontend.loaded and not frontend.check("one")  # requests may name it
        await asked_then_given_up(frontend.unload("one"), 2)
        assert asked[1][0] == "unload_adapter" and "one" in frontend.loaded
        asked[1][1].set_result(True)  # gone
        assert "one" not in frontend.loaded
        with pytest.raises(NotFound):
            frontend.check("one")
        # A waiting unload whose wait is cut short: withdrawn, the adapter stays.
        frontend.loaded.add("two")
        await asked_then_given_up(frontend.unload("two", wait=True), 3)
        asked[2][1].set_result(False)  # not gone: it waits for its requests
        assert "two" in frontend.loaded and asked[3][0] == "cancel_unload"

    asyncio.run(main())
    frontend.shutdown()
