"""Rich errors from real daemons on loopback: each refusal of the gateway and of a runtime
serving SmolLM2 carries google.rpc details (ErrorInfo reason and domain, BadRequest field,
RetryInfo), decoded from the real call's `grpc-status-details-bin` trailer; a runtime's details
reach the gateway's caller unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from llmserve.processes import DaemonProcess, RedisServer
from llmserve.v1 import common_pb2, gateway_pb2, runtime_pb2, runtime_pb2_grpc
from tests.error_details import Decoded, decode
from tests.gateway.gateway_harness import MAX_MODEL_LEN, MODEL, OWNERS, Client, start_gateway

NO_SUCH_SESSION = "0" * 32


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer,
    runtimes: list[DaemonProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DaemonProcess, DaemonProcess, dict[str, str]]]:
    gateway, keys = start_gateway(tmp_path_factory.mktemp("errors"), redis_server, runtimes[:1])
    yield gateway, runtimes[0], keys
    gateway.terminate()


def refusal(call: Any) -> Decoded:
    """The details of the error that `call` raises (a stream must be read in `call`)."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    return decode(err.value)


def gateway_generate(client: Client, **kw: Any) -> Any:
    request = gateway_pb2.GatewayGenerateRequest(model=MODEL, **kw)
    return list(client.stub.Generate(request, metadata=client.metadata, timeout=60))


def test_gateway_refusals_name_their_reason(stack: tuple[DaemonProcess, ...]) -> None:
    gateway, _, keys = stack
    alice = Client(gateway.address, keys[OWNERS[0]])  # type: ignore[index]
    try:
        got = refusal(lambda: alice.get(NO_SUCH_SESSION))
        assert (got.code, got.reason, got.domain) == (
            grpc.StatusCode.NOT_FOUND,
            "SESSION_NOT_FOUND",
            "llmserve.dev",
        )
        got = refusal(lambda: alice.create(model="no-such-model"))
        assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
        got = refusal(lambda: alice.create(adapter="no-such-adapter"))
        assert (got.code, got.reason) == (grpc.StatusCode.NOT_FOUND, "ADAPTER_NOT_FOUND")
        got = refusal(lambda: alice.create(model=""))
        assert (got.code, got.reason, got.fields) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "FIELD_REQUIRED",
            ["model"],
        )
        got = refusal(lambda: alice.list(page_token="not-a-token"))
        assert (got.reason, got.fields) == ("INVALID_FIELD", ["page_token"])
        got = refusal(lambda: list(alice.chat_call(NO_SUCH_SESSION, "")))
        assert (got.reason, got.fields) == ("FIELD_REQUIRED", ["message"])
    finally:
        alice.close()
    for key, reason in ((None, "API_KEY_MISSING"), ("not-a-key-of-anyone", "API_KEY_UNKNOWN")):
        stranger = Client(gateway.address, key)
        try:
            got = refusal(lambda c=stranger: c.list())  # type: ignore[misc]
            assert (got.code, got.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
        finally:
            stranger.close()


def test_runtime_details_pass_through_the_gateway(stack: tuple[DaemonProcess, ...]) -> None:
    """The runtime refuses; the gateway's caller gets the runtime's reason and field."""
    gateway, runtime, keys = stack
    too_long = common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=[1] * (MAX_MODEL_LEN + 5)))
    bad_top_p = common_pb2.SamplingParams(top_p=2.0, max_tokens=1)
    cases = [
        ({"prompt": too_long}, "PROMPT_TOO_LONG", ["prompt"]),
        ({"prompt": common_pb2.Prompt(text="hi"), "sampling": bad_top_p}, "INVALID_FIELD",
         ["sampling.top_p"]),
    ]  # fmt: skip
    alice = Client(gateway.address, keys[OWNERS[0]])  # type: ignore[index]
    with grpc.insecure_channel(runtime.address) as channel:  # type: ignore[attr-defined]
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        try:
            for fields, reason, field_paths in cases:
                request = runtime_pb2.GenerateRequest(**fields)
                direct = refusal(lambda r=request: list(stub.Generate(r, timeout=60)))  # type: ignore[misc]
                via_gateway = refusal(lambda f=fields: gateway_generate(alice, **f))  # type: ignore[misc]
                for got in (direct, via_gateway):
                    assert got.code == grpc.StatusCode.INVALID_ARGUMENT, got
                    assert (got.reason, got.domain, got.fields) == (
                        reason,
                        "llmserve.dev",
                        field_paths,
                    )
                assert via_gateway.message == f"runtime: {direct.message}"
        finally:
            alice.close()
