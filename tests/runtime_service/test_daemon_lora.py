"""LoRA through the runtime daemon's RPCs: load, generate with several adapters and without
one in the same batch (outputs equal transformers + PEFT), list, unload, and bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from llmserve.processes import DaemonProcess
from llmserve.v1 import runtime_pb2, runtime_pb2_grpc
from tests.runtime_service.daemon_harness import collect, generate_request, start_runtime, tokens
from tests.runtime_service.lora_reference import make_adapter, make_adapters, peft_greedy
from tests.runtime_service.reference import hf_greedy
from tests.runtime_service.test_engine_parity import mixed_prompts

ARCH = "llama"
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def base(tiny_model_dir: Callable[[str], Path]) -> Path:
    return tiny_model_dir(ARCH)


@pytest.fixture(scope="module")
def adapters(base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_adapters(base, tmp_path_factory.mktemp("adapters"), 3)


@pytest.fixture(scope="module")
def runtime(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    proc = start_runtime(
        base,
        tmp_path_factory.mktemp("lora-runtime"),
        "--dtype",
        "float32",
        "--enable-lora",
        "--max-loras",
        "2",
        "--max-lora-rank",
        "16",
    )
    yield proc
    proc.terminate()


def stub_for(proc: DaemonProcess) -> tuple[grpc.Channel, runtime_pb2_grpc.RuntimeStub]:
    channel = grpc.insecure_channel(proc.address)
    return channel, runtime_pb2_grpc.RuntimeStub(channel)


def test_adapters_and_base_share_a_batch_over_grpc(
    runtime: DaemonProcess, base: Path, adapters: list[Path]
) -> None:
    channel, stub = stub_for(runtime)
    with channel:
        for i, path in enumerate(adapters):
            reply = stub.LoadAdapter(runtime_pb2.LoadAdapterRequest(name=f"a{i}", path=str(path)))
            assert reply.adapter.name == f"a{i}" and reply.adapter.rank > 0
        listed = stub.ListAdapters(runtime_pb2.RuntimeListAdaptersRequest()).adapters
        assert sorted(a.name for a in listed) == ["a0", "a1", "a2"]
        status = stub.GetStatus(runtime_pb2.GetStatusRequest())
        assert sorted(a.name for a in status.adapters) == ["a0", "a1", "a2"]
    prompts = mixed_prompts(base, 8, seed=61, max_len=40)
    names = ["", "a0", "a1", "a2", "", "a2", "a1", "a0"]  # 3 adapters through 2 device slots

    async def main() -> list[list[int]]:
        async with grpc.aio.insecure_channel(runtime.address) as aio_channel:
            aio_stub = runtime_pb2_grpc.RuntimeStub(aio_channel)
            calls = []
            for prompt, name in zip(prompts, names, strict=True):
                request = generate_request(prompt, MAX_TOKENS)
                request.adapter = name
                calls.append(collect(aio_stub, request))
            return [tokens(chunks) for chunks in await asyncio.gather(*calls)]

    results = asyncio.run(main())
    for prompt, name, got in zip(prompts, names, results, strict=True):
        expected = (
            hf_greedy(base, prompt, MAX_TOKENS)
            if not name
            else peft_greedy(base, adapters[int(name[1])], prompt, MAX_TOKENS)
        )
        assert got == expected, name
    assert results[1] != hf_greedy(base, prompts[1], MAX_TOKENS)  # the adapter matters


def test_unload_in_use_fails_then_waits(runtime: DaemonProcess, adapters: list[Path]) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(runtime.address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            await stub.LoadAdapter(
                runtime_pb2.LoadAdapterRequest(name="busy", path=str(adapters[0]))
            )
            request = generate_request([5, 6, 7], 200)
            request.adapter = "busy"
            call = stub.Generate(request)
            chunks = [await call.read()]  # running with the adapter
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.UnloadAdapter(runtime_pb2.UnloadAdapterRequest(name="busy"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            unload = asyncio.ensure_future(
                stub.UnloadAdapter(runtime_pb2.UnloadAdapterRequest(name="busy", wait=True))
            )
            while (chunk := await call.read()) is not grpc.aio.EOF:  # it finishes undisturbed
                chunks.append(chunk)
            assert len(tokens(chunks)) == 200
            await unload
            names = [
                a.name
                for a in (
                    await stub.ListAdapters(runtime_pb2.RuntimeListAdaptersRequest())
                ).adapters
            ]
            assert "busy" not in names

    asyncio.run(main())


def test_bad_adapters_get_precise_codes(
    runtime: DaemonProcess, base: Path, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    too_big = make_adapter(base, tmp_path / "rank32", rank=32, alpha=32)
    other_base = make_adapter(tiny_model_dir("qwen3"), tmp_path / "qwen3-adapter")
    cases = [
        (
            runtime_pb2.LoadAdapterRequest(name="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "source must be set",
        ),
        (
            runtime_pb2.LoadAdapterRequest(name="big", path=str(too_big)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "16",
        ),
        (
            runtime_pb2.LoadAdapterRequest(name="other", path=str(other_base)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "",
        ),
        (
            runtime_pb2.LoadAdapterRequest(name="bad name!", path=str(too_big)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "name",
        ),
        (
            runtime_pb2.LoadAdapterRequest(name="missing", path=str(tmp_path / "nowhere")),
            grpc.StatusCode.NOT_FOUND,
            "",
        ),
    ]
    channel, stub = stub_for(runtime)
    with channel:
        for request, code, fragment in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.LoadAdapter(request)
            assert err.value.code() == code, (request, err.value.details())
            assert fragment in err.value.details()
        request = generate_request([5, 6], 3)
        request.adapter = "never-loaded"
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(request))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "adapter 'never-loaded' is not loaded" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.UnloadAdapter(runtime_pb2.UnloadAdapterRequest(name="never-loaded"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Still serving.
        assert len(tokens(list(stub.Generate(generate_request([5, 6], 3))))) == 3


def test_adapter_path_root_confines_load_adapter(
    base: Path, adapters: list[Path], tmp_path: Path
) -> None:
    """With adapter_path_root, LoadAdapter takes paths under it only (symlinks resolved):
    a caller cannot make the runtime read any directory it can see (issue 12, item 14)."""
    root = adapters[0].parent
    escape = root / "escape"
    escape.symlink_to(tmp_path)
    proc = start_runtime(
        base, tmp_path, "--dtype", "float32", "--enable-lora", "--max-lora-rank", "16",
        "--adapter-path-root", str(root),
    )  # fmt: skip
    channel, stub = stub_for(proc)
    try:
        with channel:
            for path in (str(tmp_path), str(escape), f"{root}/../x"):
                with pytest.raises(grpc.RpcError) as err:
                    stub.LoadAdapter(runtime_pb2.LoadAdapterRequest(name="a", path=path))
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "is not under adapter_path_root" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                stub.LoadAdapter(runtime_pb2.LoadAdapterRequest(name="a", path="/a\0b"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            loaded = stub.LoadAdapter(
                runtime_pb2.LoadAdapterRequest(name="a", path=str(adapters[0]))
            ).adapter
            assert loaded.name == "a"
    finally:
        escape.unlink()
        proc.terminate()
