"""Builder.RegisterAdapter and ListAdapters: a real builder process over gRPC, tiny engines it
built, and random PEFT adapters made by the `peft` package (tests/runtime_service).

The shipped SmolLM2 adapter is registered in test_smollm2.py, against the engines that
module builds anyway.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from safetensors.torch import load_file, save_file

from builder_service.build import Builder
from builder_service.spec import BuildSpec
from llmserve.device import cpu_info
from llmserve.errors import DataLoss
from llmserve.processes import DaemonProcess
from llmserve.store import ADAPTERS, AdapterManifest, StoreOptions, open_store
from llmserve.store.adapters import ADAPTER_FILES, fetch_adapter, get_adapter
from llmserve.testing.s3_server import MotoS3Server
from llmserve.v1 import builder_pb2, common_pb2
from runtime_service.engine.lora.adapter import AdapterReader
from runtime_service.models.loader import read_hf_config
from tests.builder_service.test_service import build, store_of, stub_for
from tests.error_details import decode
from tests.runtime_service.lora_reference import ALL_MODULES, make_adapter

TinyDir = Callable[[str], Path]
INT4 = common_pb2.QUANTIZATION_INT4_WEIGHT_ONLY
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def engine(daemon: DaemonProcess, tiny_model_dir: TinyDir) -> Any:
    """The tiny Llama (GQA 4:2, two layers) built unquantized by the daemon."""
    final = build(daemon, builder_pb2.BuildRequest(source=str(tiny_model_dir("llama"))))[-1]
    return final.engine


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: TinyDir) -> dict[str, Path]:
    """Adapter directories by role, made once for the module."""
    root = tmp_path_factory.mktemp("adapters")
    llama, mistral = tiny_model_dir("llama"), tiny_model_dir("mistral")
    paths = {
        "qv": make_adapter(llama, root / "qv", rank=8, alpha=16, seed=1),
        "all": make_adapter(llama, root / "all", rank=4, alpha=8, targets=ALL_MODULES, seed=2),
        "o_down": make_adapter(llama, root / "o_down", rank=4, targets=("o_proj", "down_proj")),
        "rank80": make_adapter(llama, root / "rank80", rank=80, seed=3),
        "dora": make_adapter(llama, root / "dora", rank=4, use_dora=True, seed=4),
        # Mistral's k/v project to 1 head of 16, the Llama's to 2.
        "mistral": make_adapter(mistral, root / "mistral", targets=("k_proj", "v_proj")),
    }
    # Layer 7 of a two-layer model: the qv adapter's tensors moved there.
    deep = root / "deep"
    deep.mkdir()
    (deep / "adapter_config.json").write_bytes((paths["qv"] / "adapter_config.json").read_bytes())
    tensors = load_file(paths["qv"] / "adapter_model.safetensors")
    moved = {k.replace("layers.1.", "layers.7."): v for k, v in tensors.items()}
    save_file(moved, deep / "adapter_model.safetensors", metadata={"format": "pt"})
    paths["deep"] = deep
    half = root / "no_weights"
    half.mkdir()
    (half / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    paths["no_weights"] = half
    return paths


def register(proc: DaemonProcess, name: str, source: Path | str, engine_id: str) -> Any:
    channel, stub = stub_for(proc)
    with channel:
        request = builder_pb2.RegisterAdapterRequest(
            name=name, source=str(source), engine_id=engine_id
        )
        return stub.RegisterAdapter(request, timeout=60).adapter


def list_ids(proc: DaemonProcess, base_model_digest: str = "") -> list[str]:
    channel, stub = stub_for(proc)
    with channel:
        request = builder_pb2.BuilderListAdaptersRequest(base_model_digest=base_model_digest)
        return [a.adapter_id for a in stub.ListAdapters(request, timeout=60).adapters]


def published(proc: DaemonProcess, adapter_id: str) -> int:
    assert proc.log_path is not None
    lines = [json.loads(x) for x in proc.log_path.read_text().splitlines() if x.startswith("{")]
    return sum(e["message"].startswith(f"published adapters {adapter_id} ") for e in lines)


def test_register_list_fetch(
    daemon: DaemonProcess, engine: Any, sources: dict[str, Path], tmp_path: Path
) -> None:
    adapter = register(daemon, "alpha", sources["qv"], engine.engine_id)
    assert adapter.name == "alpha" and len(adapter.adapter_id) == 32
    int(adapter.adapter_id, 16)
    assert adapter.base_model_digest == engine.model_digest
    assert (adapter.rank, adapter.alpha) == (8, 16.0)
    assert list(adapter.target_modules) == ["q_proj", "v_proj"]
    assert adapter.state == common_pb2.ADAPTER_STATE_UNSPECIFIED
    # Idempotent: the same files, name and base model are the same adapter, published once.
    assert register(daemon, "alpha", sources["qv"], engine.engine_id) == adapter
    assert published(daemon, adapter.adapter_id) == 1
    # The same files under another name are another adapter, which keeps its own name.
    alias = register(daemon, "alpha-copy", sources["qv"], engine.engine_id)
    assert alias.name == "alpha-copy" and alias.adapter_id != adapter.adapter_id
    every = register(daemon, "every-module", sources["all"], engine.engine_id)
    assert list(every.target_modules) == [m for m in ALL_MODULES]
    assert (every.rank, every.alpha) == (4, 8.0)

    ids = {adapter.adapter_id, alias.adapter_id, every.adapter_id}
    assert ids <= set(list_ids(daemon))
    assert ids <= set(list_ids(daemon, engine.model_digest))
    assert list_ids(daemon, "0" * 64) == []

    # Fetched back: the files as given, and the runtime's reader loads them.
    store = open_store(str(store_of(daemon)))
    path = fetch_adapter(store, adapter.adapter_id, tmp_path / "cache")
    for name in ADAPTER_FILES:
        assert (path / name).read_bytes() == (sources["qv"] / name).read_bytes()
    manifest = AdapterManifest.read(path)
    assert manifest == get_adapter(store, adapter.adapter_id)
    assert manifest.engine_id == engine.engine_id and manifest.source == str(sources["qv"])
    engine_dir = store_of(daemon) / "engines" / engine.engine_id
    reader = AdapterReader(read_hf_config(engine_dir), 64, torch.float32)
    loaded = reader.read("alpha", path)
    assert loaded.digest == manifest.adapter_digest
    assert loaded.target_modules == ("q_proj", "v_proj") and loaded.rank == 8

    # A corrupted stored file is named when fetched.
    stored = store_of(daemon) / ADAPTERS / every.adapter_id / "adapter_model.safetensors"
    stored.write_bytes(stored.read_bytes()[:-4] + b"rot!")
    with pytest.raises(DataLoss, match=r"adapter_model\.safetensors is corrupt: sha256"):
        fetch_adapter(store, every.adapter_id, tmp_path / "cache")


def test_identical_registrations_at_once_publish_once(
    daemon: DaemonProcess, engine: Any, sources: dict[str, Path]
) -> None:
    results: list[Any] = [None] * 4
    barrier = threading.Barrier(4)

    def call(i: int) -> None:
        barrier.wait()
        results[i] = register(daemon, "together", sources["all"], engine.engine_id)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[0] is not None and all(r == results[0] for r in results)
    assert published(daemon, results[0].adapter_id) == 1


# (request fields, code, message, google.rpc reason, field violation)
REFUSALS: list[tuple[dict[str, str], Code, str, str, str | None]] = [
    ({"name": ""}, Code.INVALID_ARGUMENT, "adapter name must not be empty", "INVALID_FIELD",
     "name"),
    ({"name": "x" * 65}, Code.INVALID_ARGUMENT, "at most 64 letters, digits", "INVALID_FIELD",
     "name"),
    ({"name": "../up"}, Code.INVALID_ARGUMENT, "adapter name '../up' is invalid",
     "INVALID_FIELD", "name"),
    ({"source": ""}, Code.INVALID_ARGUMENT, "source is required", "FIELD_REQUIRED", "source"),
    ({"engine_id": ""}, Code.INVALID_ARGUMENT, "engine_id is required", "FIELD_REQUIRED",
     "engine_id"),
    ({"engine_id": "0" * 32}, Code.NOT_FOUND, f"engine {'0' * 32} is not in the store",
     "ARTIFACT_NOT_FOUND", None),
    ({"engine_id": "../x"}, Code.INVALID_ARGUMENT, "engine_id must be", "INVALID_FIELD",
     "engine_id"),
    ({"source": "/no/such/adapter"}, Code.NOT_FOUND, "source '/no/such/adapter' does not exist",
     "SOURCE_NOT_FOUND", None),
    ({"source": "https://example.com/a"}, Code.INVALID_ARGUMENT, "source must be a directory",
     "INVALID_FIELD", "source"),
    ({"source": "no_weights"}, Code.NOT_FOUND, "has no adapter_model.safetensors",
     "SOURCE_NOT_FOUND", None),
    ({"source": "rank80"}, Code.INVALID_ARGUMENT,
     "r = 80 is above this engine's max_lora_rank (64)", "INVALID_ADAPTER", None),
    ({"source": "dora"}, Code.INVALID_ARGUMENT, "use_dora = true is a PEFT feature",
     "INVALID_ADAPTER", None),
    ({"source": "mistral"}, Code.FAILED_PRECONDITION,
     "k_proj has 32 output features, the adapter 16 (made for another base model?)",
     "ADAPTER_INCOMPATIBLE", None),
    ({"source": "deep"}, Code.FAILED_PRECONDITION, "layer 7, but the model has 2 layers",
     "ADAPTER_INCOMPATIBLE", None),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "code", "message", "reason", "field"), REFUSALS)
def test_refusals(
    daemon: DaemonProcess,
    engine: Any,
    sources: dict[str, Path],
    fields: dict[str, str],
    code: Code,
    message: str,
    reason: str,
    field: str | None,
) -> None:
    request = {"name": "refused", "source": "qv", "engine_id": engine.engine_id, **fields}
    source = request["source"]
    request["source"] = str(sources[source]) if source in sources else source
    before = list_ids(daemon)
    with pytest.raises(grpc.RpcError) as err:
        register(daemon, **request)
    assert err.value.code() == code
    assert message in err.value.details()
    decoded = decode(err.value)
    assert (decoded.reason, decoded.domain) == (reason, "llmserve.dev")
    assert decoded.fields == ([field] if field else [])
    assert list_ids(daemon) == before


def test_int4_engine_refuses_lora_on_folded_layers(
    daemon: DaemonProcess, engine: Any, sources: dict[str, Path], tiny_model_dir: TinyDir
) -> None:
    """An int4 engine's qkv and gate_up inputs arrive divided by scales folded into the norms:
    LoRA on q/k/v/gate/up is refused there, on o/down it is not."""
    request = builder_pb2.BuildRequest(
        source=str(tiny_model_dir("llama")), quantization=INT4, force=True
    )
    int4 = build(daemon, request)[-1].engine
    assert int4.model_digest == engine.model_digest
    for source, layer in [("qv", "qkv"), ("all", "gate_up")]:
        with pytest.raises(grpc.RpcError) as err:
            register(daemon, "folded", sources[source], int4.engine_id)
        assert err.value.code() == Code.FAILED_PRECONDITION
        assert f"this engine's int4 {layer} layers take inputs divided by" in err.value.details()
        assert int4.engine_id in err.value.details()
    o_down = register(daemon, "o-down", sources["o_down"], int4.engine_id)
    assert list(o_down.target_modules) == ["o_proj", "down_proj"]
    # Keyed by the base model, not the engine: the unquantized engine's is the same adapter.
    assert register(daemon, "o-down", sources["o_down"], engine.engine_id) == o_down


def test_s3_source_and_store(
    s3_server: MotoS3Server, tiny_model_dir: TinyDir, sources: dict[str, Path], tmp_path: Path
) -> None:
    client = s3_server.client()
    bucket = f"adapters-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/store"
    store = open_store(uri, StoreOptions(s3_endpoint_url=s3_server.endpoint_url))
    builder = Builder(store, tmp_path / "work", device=cpu_info(), s3_client=client)
    engine = builder.build(BuildSpec(source=str(tiny_model_dir("llama")))).engine
    assert engine is not None
    for name in ADAPTER_FILES:
        client.upload_file(str(sources["qv"] / name), bucket, f"adapters/qv/{name}")
    args = ["--store", uri, "--s3-endpoint-url", s3_server.endpoint_url]
    args += ["--work-dir", str(tmp_path / "daemon-work"), "--grace-period-s", "2"]
    proc = DaemonProcess("builder_service", args, log_path=tmp_path / "builder.log").start()
    try:
        proc.wait_serving()
        adapter = register(proc, "remote", f"s3://{bucket}/adapters/qv/", engine.engine_id)
        assert list_ids(proc, engine.model_digest) == [adapter.adapter_id]
        # The same files from a local directory are the same adapter.
        assert register(proc, "remote", sources["qv"], engine.engine_id) == adapter
        with pytest.raises(grpc.RpcError) as err:
            register(proc, "missing", f"s3://{bucket}/adapters/none", engine.engine_id)
        assert err.value.code() == Code.NOT_FOUND
        assert "has no readable adapter_config.json" in err.value.details()
    finally:
        proc.terminate()
    path = fetch_adapter(store, adapter.adapter_id, tmp_path / "cache")
    for name in ADAPTER_FILES:
        assert (path / name).read_bytes() == (sources["qv"] / name).read_bytes()
    assert get_adapter(store, adapter.adapter_id).source == f"s3://{bucket}/adapters/qv/"
