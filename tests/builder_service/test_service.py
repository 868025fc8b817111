"""The builder daemon as a real process, called over gRPC on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmserve.processes import DaemonProcess
from llmserve.store import ENGINES, open_store
from llmserve.v1 import builder_pb2, builder_pb2_grpc, common_pb2
from tests.builder_service.conftest import start_builder

TinyDir = Callable[[str], Path]
INT8 = common_pb2.QUANTIZATION_INT8_WEIGHT_ONLY


def stub_for(proc: DaemonProcess) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(proc.address)
    return channel, builder_pb2_grpc.BuilderStub(channel)


def build(proc: DaemonProcess, request: Any) -> list[Any]:
    channel, stub = stub_for(proc)
    with channel:
        return list(stub.Build(request, timeout=300))


def store_of(proc: DaemonProcess) -> Path:
    return Path(proc.args[proc.args.index("--store") + 1])


def published_lines(*logs: Path) -> list[dict[str, Any]]:
    lines = [line for log in logs for line in log.read_text().splitlines()]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in entries if e["message"].startswith("published engines ")]


def test_four_identical_builds_run_once(daemon: DaemonProcess, tiny_model_dir: TinyDir) -> None:
    request = builder_pb2.BuildRequest(source=str(tiny_model_dir("mistral")), quantization=INT8)
    results: list[list[Any]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def call(i: int) -> None:
        barrier.wait()
        results[i] = build(daemon, request)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    finals = [events[-1] for events in results]
    assert all(f.phase == builder_pb2.BUILD_PHASE_DONE for f in finals)
    assert len({f.engine.engine_id for f in finals}) == 1
    assert len({f.engine.create_time.ToNanoseconds() for f in finals}) == 1
    assert sorted(f.cached for f in finals) == [False, True, True, True]
    assert daemon.log_path is not None
    assert len(published_lines(daemon.log_path)) == 1
    percents = [e.percent for e in results[0]]
    assert percents == sorted(percents) and percents[-1] == 100
    engine = finals[0].engine
    assert engine.target == "cpu" and engine.quantization == INT8
    assert engine.dtype == common_pb2.DTYPE_FLOAT32
    assert engine.validation.source_perplexity > 1 and engine.validation.passed


def test_builders_sharing_a_store_build_once(tmp_path: Path, tiny_model_dir: TinyDir) -> None:
    procs = [
        start_builder(tmp_path / "store", tmp_path / f"work{i}", tmp_path / f"b{i}.log")
        for i in range(2)
    ]
    try:
        for proc in procs:
            proc.wait_serving()
        request = builder_pb2.BuildRequest(source=str(tiny_model_dir("qwen2")), quantization=INT8)
        results: list[list[Any]] = [[], []]
        barrier = threading.Barrier(2)

        def call(i: int) -> None:
            barrier.wait()
            results[i] = build(procs[i], request)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        for proc in procs:
            proc.terminate()
    finals = [events[-1] for events in results]
    assert sorted(f.cached for f in finals) == [False, True]
    assert len({f.engine.engine_id for f in finals}) == 1
    assert len(published_lines(tmp_path / "b0.log", tmp_path / "b1.log")) == 1
    assert len(open_store(str(tmp_path / "store")).list(ENGINES)) == 1


def test_engine_rpcs(daemon: DaemonProcess, tiny_model_dir: TinyDir) -> None:
    source = str(tiny_model_dir("qwen3"))
    final = build(daemon, builder_pb2.BuildRequest(source=source, model_name="tiny-q3"))[-1]
    engine_id = final.engine.engine_id
    channel, stub = stub_for(daemon)
    with channel:
        got = stub.GetEngine(builder_pb2.GetEngineRequest(engine_id=engine_id)).engine
        assert got == final.engine
        assert got.model_name == "tiny-q3" and got.architecture == "Qwen3ForCausalLM"
        assert got.size_bytes > 0 and got.toolchain["torch"]
        listed = stub.ListEngines(builder_pb2.ListEnginesRequest(model_name="tiny-q3")).engines
        assert [e.engine_id for e in listed] == [engine_id]
        assert stub.ListEngines(builder_pb2.ListEnginesRequest(target="sm_90")).engines == []

        store = open_store(str(store_of(daemon)))
        with store.hold(ENGINES, engine_id, holder="runtime-7"):
            with pytest.raises(grpc.RpcError) as err:
                stub.DeleteEngine(builder_pb2.DeleteEngineRequest(engine_id=engine_id))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "runtime-7" in err.value.details()
        freed = stub.DeleteEngine(builder_pb2.DeleteEngineRequest(engine_id=engine_id))
        assert freed.freed_bytes == got.size_bytes
        for request, code in [
            (builder_pb2.GetEngineRequest(engine_id=engine_id), grpc.StatusCode.NOT_FOUND),
            (builder_pb2.GetEngineRequest(engine_id="../x"), grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.GetEngine(request)
            assert err.value.code() == code


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        (
            {"quantization": common_pb2.QUANTIZATION_FP8},
            grpc.StatusCode.FAILED_PRECONDITION,
            "fp8 needs compute capability >= 8.9",
        ),
        ({"source": "/no/such/model"}, grpc.StatusCode.NOT_FOUND, "does not exist"),
        (
            {"source": "/tmp/a\0b"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "source must not contain a NUL character",
        ),
        ({"target": "sm_9x"}, grpc.StatusCode.INVALID_ARGUMENT, "target must be"),
        (
            {"max_perplexity_increase": 11.0},
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_perplexity_increase must be in [0, 10], got 11.0",
        ),
        ({"max_model_len": -1}, grpc.StatusCode.INVALID_ARGUMENT, "max_model_len must be >= 1"),
    ],
)
def test_build_refusals(
    daemon: DaemonProcess,
    tiny_model_dir: TinyDir,
    fields: dict[str, Any],
    code: grpc.StatusCode,
    message: str,
) -> None:
    request = builder_pb2.BuildRequest(**{"source": str(tiny_model_dir("llama")), **fields})
    with pytest.raises(grpc.RpcError) as err:
        build(daemon, request)
    assert err.value.code() == code
    assert message in err.value.details()
