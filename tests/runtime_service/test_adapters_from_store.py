"""LoadAdapter by adapter_id: a runtime serving an engine from the store loads adapters
registered for that engine's model (outputs equal transformers + PEFT), holds them in the
store while loaded, and refuses adapters of another model, missing ones and corrupted ones."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from builder_service.adapters import register_adapter
from builder_service.build import Builder
from builder_service.spec import BuildSpec
from llmserve.device import cpu_info
from llmserve.processes import DaemonProcess
from llmserve.store import ADAPTERS, ArtifactStore, open_store
from llmserve.store.adapters import AdapterManifest
from llmserve.v1 import runtime_pb2, runtime_pb2_grpc
from tests.runtime_service.daemon_harness import generate_request, tokens
from tests.runtime_service.lora_reference import make_adapter, peft_greedy
from tests.runtime_service.test_engine_parity import mixed_prompts

MAX_TOKENS = 8


@dataclass
class Setup:
    store_dir: Path
    store: ArtifactStore
    base: Path  # the tiny llama the served engine was built from
    adapter_path: Path
    adapter: AdapterManifest  # registered for the served engine's model
    foreign: AdapterManifest  # registered for another model (qwen3)
    runtime: DaemonProcess


def _build(builder: Builder, source: Path) -> str:
    final = builder.build(BuildSpec(source=str(source)))
    assert final.engine is not None
    return final.engine.engine_id


@pytest.fixture(scope="module")
def setup(
    tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("adapters-from-store")
    store_dir = tmp / "store"
    store = open_store(str(store_dir))
    builder = Builder(store, tmp / "work", device=cpu_info())
    base, other = tiny_model_dir("llama"), tiny_model_dir("qwen3")
    engine_id, other_engine = _build(builder, base), _build(builder, other)
    adapter_path = make_adapter(base, tmp / "llama-adapter", rank=8, alpha=16)
    adapter = register_adapter(
        store, "support", str(adapter_path), engine_id, work_dir=tmp / "work"
    )
    foreign = register_adapter(
        store,
        "support",
        str(make_adapter(other, tmp / "qwen3-adapter")),
        other_engine,
        work_dir=tmp / "work",
    )
    args = ["--store", str(store_dir), "--engine", engine_id]
    args += ["--engine-cache-dir", str(tmp / "cache"), "--log-format", "text"]
    args += ["--num-kv-blocks", "64", "--dtype", "float32", "--enable-lora"]
    args += ["--device", "cpu"]  # the engines were built for the CPU target
    runtime = DaemonProcess("runtime_service", args, log_path=tmp / "runtime.log")
    runtime.start().wait_serving(timeout=120)
    try:
        yield Setup(store_dir, store, base, adapter_path, adapter, foreign, runtime)
    finally:
        runtime.terminate()


def _load(stub: runtime_pb2_grpc.RuntimeStub, name: str, adapter_id: str) -> object:
    request = runtime_pb2.LoadAdapterRequest(name=name, adapter_id=adapter_id)
    return stub.LoadAdapter(request, timeout=60).adapter


def test_adapter_from_the_store_generates_like_peft_and_is_held(setup: Setup) -> None:
    prompts = mixed_prompts(setup.base, 3, seed=71, max_len=30)
    with grpc.insecure_channel(setup.runtime.address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        adapter = _load(stub, "my-support", setup.adapter.adapter_id)
        assert adapter.name == "my-support"  # the caller's handle
        assert adapter.adapter_id == setup.adapter.adapter_id
        assert adapter.base_model_digest == setup.adapter.base_model_digest
        assert (adapter.rank, adapter.alpha) == (8, 16.0)
        assert setup.store.holders(ADAPTERS, setup.adapter.adapter_id) != []
        listed = stub.ListAdapters(runtime_pb2.RuntimeListAdaptersRequest()).adapters
        assert [(a.name, a.adapter_id) for a in listed] == [
            ("my-support", setup.adapter.adapter_id)
        ]
        for prompt in prompts:
            request = generate_request(prompt, MAX_TOKENS)
            request.adapter = "my-support"
            got = tokens(list(stub.Generate(request)))
            assert got == peft_greedy(setup.base, setup.adapter_path, prompt, MAX_TOKENS)
        # Loading it again under the same name keeps one hold.
        _load(stub, "my-support", setup.adapter.adapter_id)
        assert len(setup.store.holders(ADAPTERS, setup.adapter.adapter_id)) == 1
        stub.UnloadAdapter(runtime_pb2.UnloadAdapterRequest(name="my-support"))
    assert setup.store.holders(ADAPTERS, setup.adapter.adapter_id) == []


def test_adapters_that_cannot_be_served_are_refused_precisely(setup: Setup) -> None:
    missing = "0" * 32
    with grpc.insecure_channel(setup.runtime.address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            _load(stub, "other", setup.foreign.adapter_id)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"registered for model {setup.foreign.base_model_digest}" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _load(stub, "missing", missing)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _load(stub, "bad name!", setup.adapter.adapter_id)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name" in err.value.details()

        stored = setup.store_dir / ADAPTERS / setup.adapter.adapter_id
        weights = stored / "adapter_model.safetensors"
        original = weights.read_bytes()
        weights.write_bytes(original[:-4] + b"rot!")
        cache = setup.store_dir.parent / "cache" / "adapters"
        try:
            shutil.rmtree(cache, ignore_errors=True)  # a good cached copy would be reused
            with pytest.raises(grpc.RpcError) as err:
                _load(stub, "rotten", setup.adapter.adapter_id)
            assert err.value.code() == grpc.StatusCode.DATA_LOSS
            assert "adapter_model.safetensors is corrupt" in err.value.details()
        finally:
            weights.write_bytes(original)
        listed = stub.ListAdapters(runtime_pb2.RuntimeListAdaptersRequest()).adapters
        assert list(listed) == []
        # Nothing is held after the refusals, and the runtime still serves.
        for manifest in (setup.adapter, setup.foreign):
            assert setup.store.holders(ADAPTERS, manifest.adapter_id) == []
        assert len(tokens(list(stub.Generate(generate_request([5, 6], 3))))) == 3
