"""The committed stubs match the protos, and the contract keeps its conventions."""

from __future__ import annotations

from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor

from llmserve import protogen
from llmserve.v1 import builder_pb2, common_pb2, engine_pb2, gateway_pb2, runtime_pb2

MODULES = (builder_pb2, common_pb2, engine_pb2, gateway_pb2, runtime_pb2)


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    generated = protogen.generate(tmp_path)
    committed_dir = protogen.REPO_ROOT / protogen.PACKAGE_DIR
    committed = sorted(p.relative_to(protogen.REPO_ROOT) for p in committed_dir.glob("*_pb2*.py*"))
    assert committed == generated, "stubs added or removed: run `make protos`"
    for rel in generated:
        fresh = (tmp_path / rel).read_bytes()
        assert (protogen.REPO_ROOT / rel).read_bytes() == fresh, f"{rel} is stale: make protos"


def test_services_cover_the_contract() -> None:
    def methods(module: object, service: str) -> set[str]:
        return {m.name for m in module.DESCRIPTOR.services_by_name[service].methods}

    assert methods(builder_pb2, "Builder") == {
        "Build",
        "GetEngine",
        "ListEngines",
        "DeleteEngine",
        "RegisterAdapter",
        "ListAdapters",
    }
    assert methods(runtime_pb2, "Runtime") == {
        "Generate",
        "GetStatus",
        "LoadAdapter",
        "UnloadAdapter",
        "ListAdapters",
    }
    assert methods(gateway_pb2, "Gateway") == {
        "CreateSession",
        "GetSession",
        "ListSessions",
        "DeleteSession",
        "Chat",
        "Generate",
        "ListModels",
    }
    streaming = {
        (s.name, m.name)
        for module in MODULES
        for s in module.DESCRIPTOR.services_by_name.values()
        for m in s.methods
        if m.server_streaming
    }
    assert streaming == {
        ("Builder", "Build"),
        ("Runtime", "Generate"),
        ("Gateway", "Chat"),
        ("Gateway", "Generate"),
    }


def test_enums_are_prefixed_with_a_zero_unspecified() -> None:
    for module in MODULES:
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            prefix = (
                "".join(
                    "_" + c if c.isupper() and i else c for i, c in enumerate(enum.name)
                ).upper()
                + "_"
            )
            assert enum.values_by_number[0].name == prefix + "UNSPECIFIED"
            assert all(v.name.startswith(prefix) for v in enum.values)


def test_durations_are_int64_nanoseconds() -> None:
    for module in MODULES:
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                if field.name.endswith("_ns"):
                    assert field.type == FieldDescriptor.TYPE_INT64, field.full_name


def test_sampling_fields_with_defaults_track_presence() -> None:
    sampling = common_pb2.SamplingParams()
    assert not sampling.HasField("temperature")
    sampling.temperature = 0.0
    assert sampling.HasField("temperature")  # greedy is distinguishable from "default"
    for name in ("top_p", "top_k", "min_p", "seed", "max_tokens", "logprobs"):
        assert sampling.DESCRIPTOR.fields_by_name[name].has_presence, name
