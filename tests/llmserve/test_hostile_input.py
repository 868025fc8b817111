"""Hostile bytes and headers against a real in-process server: every one gets a precise
status (INVALID_ARGUMENT, UNAUTHENTICATED), never UNKNOWN or INTERNAL, and the server keeps
serving (issue 12, items 6, 7, 10, 14)."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve import errors
from llmserve.paths import check_path
from llmserve.server import Daemon
from llmserve.server.interceptor import MAX_DETAILS_CHARS
from llmserve.v1 import runtime_pb2, runtime_pb2_grpc
from tests.error_details import decode
from tests.llmserve.test_server import ScriptedRuntime, run_with_daemon

STATUS = "/llmserve.v1.Runtime/GetStatus"
GENERATE = "/llmserve.v1.Runtime/Generate"
# Field 1 (request_id, a string) of GenerateRequest holding bytes that are not UTF-8.
BAD_UTF8 = b"\x0a\x02\xff\xfe"
TRUNCATED = b"\x0a\x10abc"  # a length-delimited field that claims 16 bytes and has 3


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        (GENERATE, BAD_UTF8),
        (GENERATE, TRUNCATED),
        (STATUS, TRUNCATED),
        (STATUS, b"\xff\xff\xff\xff\xff"),
    ],
)
def test_undecodable_request_is_invalid_argument(raw: bytes, method: str) -> None:
    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        if method == STATUS:
            call = channel.unary_unary(method)(raw)
        else:
            call = channel.unary_stream(method)(raw).read()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert f"the request to {method} is not a valid protobuf message" in err.value.details()
        assert decode(err.value).reason == "MALFORMED_REQUEST"
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        assert (await stub.GetStatus(runtime_pb2.GetStatusRequest())).num_running == 1

    run_with_daemon(body)


def test_binary_metadata_that_is_not_utf8_is_ignored() -> None:
    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        metadata = (("x-junk-bin", b"\xff\xfe\x00\x80"), ("traceparent-bin", b"\xc3\x28"))
        reply = await stub.GetStatus(runtime_pb2.GetStatusRequest(), metadata=metadata)
        assert reply.num_running == 1
        chunks = [c async for c in stub.Generate(runtime_pb2.GenerateRequest(), metadata=metadata)]
        assert len(chunks) == 5

    run_with_daemon(body)


def test_status_details_are_bounded() -> None:
    """A message quoting a 100 kB id stays a NOT_FOUND (was: RESOURCE_EXHAUSTED 'metadata
    size exceeds hard limit'), cut to MAX_DETAILS_CHARS; `shown` cuts ids themselves."""
    huge = "x" * 100_000

    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        servicer.fail_with = errors.NotFound(f"engine {huge} is not in the store")
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetStatus(runtime_pb2.GetStatusRequest())
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(err.value.details()) <= MAX_DETAILS_CHARS
        assert err.value.details().endswith("(100027 characters, cut)")

    run_with_daemon(body)
    assert errors.shown(huge) == f"{'x' * 80!r}... (100000 characters)"
    assert errors.shown("abc") == "'abc'"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/tmp/a\0b", "source must not contain a NUL character, got '/tmp/a\\x00b'"),
        ("/" + "a" * 5000, "source is 5001 characters, more than the limit of 4096"),
    ],
)
def test_paths_with_nul_or_too_long_are_invalid(value: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as err:
        check_path("source", value)
    assert err.value.message == message


def test_service_token_guards_every_call_but_health(tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")

    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong-token-0123456789"),)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetStatus(runtime_pb2.GetStatusRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "service token" in err.value.details()
            assert decode(err.value).reason == "SERVICE_TOKEN_INVALID"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Generate(runtime_pb2.GenerateRequest(), metadata=metadata).read()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = (("authorization", f"Bearer {token}"),)
        assert (await stub.GetStatus(runtime_pb2.GetStatusRequest(), metadata=good)).num_running
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # A rotated Secret: the new token works, the old one no longer does.
        rotated = secrets.token_hex(16)
        token_file.write_text(rotated)
        new = (("authorization", f"Bearer {rotated}"),)
        assert (await stub.GetStatus(runtime_pb2.GetStatusRequest(), metadata=new)).num_running
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetStatus(runtime_pb2.GetStatusRequest(), metadata=good)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    run_with_daemon(body, service_token_file=token_file)
