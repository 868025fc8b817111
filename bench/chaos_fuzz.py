"""Fuzzed calls for bench/chaos.py: random bytes, mutated valid messages and hostile values
(huge ids, NaN, NUL, deep JSON, non-UTF-8 binary metadata) sent to every unary and streaming
method of the gateway, a runtime and the builder. Returns the status code of each call."""

from __future__ import annotations

import base64
import random
from collections import Counter
from typing import Any

import grpc

from llmserve.v1 import builder_pb2, common_pb2, gateway_pb2, runtime_pb2

# (service, method, streaming, a valid request)
GW, RT, BD = "llmserve.v1.Gateway", "llmserve.v1.Runtime", "llmserve.v1.Builder"
GATEWAY = [
    (GW, "CreateSession", False, gateway_pb2.CreateSessionRequest(model="smollm2")),
    (GW, "GetSession", False, gateway_pb2.GetSessionRequest(session_id="0" * 32)),
    (GW, "ListSessions", False, gateway_pb2.ListSessionsRequest(page_size=5)),
    (GW, "DeleteSession", False, gateway_pb2.DeleteSessionRequest(session_id="1" * 32)),
    (GW, "ListModels", False, gateway_pb2.ListModelsRequest()),
    (GW, "Chat", True, gateway_pb2.ChatRequest(session_id="0" * 32, message="hi")),
    (
        GW, "Generate", True,
        gateway_pb2.GatewayGenerateRequest(
            model="smollm2", prompt=common_pb2.Prompt(text="hi"),
            sampling=common_pb2.SamplingParams(max_tokens=1),
        ),
    ),
]  # fmt: skip
RUNTIME = [
    (
        RT, "Generate", True,
        runtime_pb2.GenerateRequest(
            prompt=common_pb2.Prompt(text="hi"), sampling=common_pb2.SamplingParams(max_tokens=1)
        ),
    ),
    (RT, "GetStatus", False, runtime_pb2.GetStatusRequest()),
    (RT, "LoadAdapter", False, runtime_pb2.LoadAdapterRequest(name="a", path="/no")),
    (RT, "UnloadAdapter", False, runtime_pb2.UnloadAdapterRequest(name="a")),
]  # fmt: skip
BUILDER = [
    (BD, "GetEngine", False, builder_pb2.GetEngineRequest(engine_id="e")),
    (BD, "ListEngines", False, builder_pb2.ListEnginesRequest()),
    (BD, "DeleteEngine", False, builder_pb2.DeleteEngineRequest(engine_id="e")),
    (BD, "Build", True, builder_pb2.BuildRequest(source="/nonexistent")),
]  # fmt: skip


def hostile_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            "x" * rng.choice([129, 4097, 100_000]),
            "a\0b",
            "\U0010ffff" * 50,
            base64.urlsafe_b64encode(b'[NaN, "x"]').decode(),
            base64.urlsafe_b64encode(b"[" * 50_000).decode(),
            float("nan"),
            float("inf"),
            1e-45,
            -1,
            2**31 - 1,
        ]
    )


def mutate(message: Any, rng: random.Random) -> bytes:
    """A valid message with one field set to a hostile value, then maybe bytes flipped."""
    message = type(message).FromString(message.SerializeToString())
    target = message
    if message.DESCRIPTOR.fields_by_name.get("sampling") is not None and rng.random() < 0.5:
        target = message.sampling
    fields = target.DESCRIPTOR.fields
    if fields:
        field = rng.choice(fields)
        value = hostile_value(rng)
        try:
            repeated = getattr(field, "is_repeated", False)
            if not repeated and field.message_type is None:
                setattr(target, field.name, value)
        except (TypeError, ValueError):
            pass
    raw = bytearray(message.SerializeToString())
    if raw and rng.random() < 0.5:
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    return bytes(raw)


def fuzz(
    targets: dict[str, str], metadata: dict[str, list[tuple[str, Any]]], n: int, seed: int = 12
) -> Counter[str]:
    """`n` fuzzed calls spread over the services at `targets` {"gateway"|"runtime"|"builder":
    address}; returns how many ended with each status code name."""
    rng = random.Random(seed)
    methods = {"gateway": GATEWAY, "runtime": RUNTIME, "builder": BUILDER}
    channels = {name: grpc.insecure_channel(address) for name, address in targets.items()}
    codes: Counter[str] = Counter()
    try:
        for i in range(n):
            name = rng.choice(sorted(targets))
            service, method, streaming, valid = rng.choice(methods[name])
            kind = i % 3
            raw = (
                rng.randbytes(rng.randint(1, 64))
                if kind == 0
                else mutate(valid, rng)
                if kind == 1
                else valid.SerializeToString()
            )
            md = list(metadata.get(name, []))
            if kind == 2:  # a valid request with hostile headers
                md += [("x-junk-bin", rng.randbytes(16)), ("traceparent", "00-zz-zz-01")]
            path = f"/{service}/{method}"
            try:
                if streaming:
                    for _ in channels[name].unary_stream(path)(raw, metadata=md, timeout=60):
                        pass
                else:
                    channels[name].unary_unary(path)(raw, metadata=md, timeout=60)
                codes["OK"] += 1
            except grpc.RpcError as e:
                codes[e.code().name] += 1
    finally:
        for channel in channels.values():
            channel.close()
    return codes
