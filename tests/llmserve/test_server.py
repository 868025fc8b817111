"""The gRPC server helpers on a real in-process server: errors, drain, limits, reflection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from llmserve import errors
from llmserve.reasons import Reason
from llmserve.server import Daemon, ServerConfig, Service
from llmserve.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc
from tests.error_details import decode

NUM_CHUNKS = 5
CHUNK_INTERVAL_S = 0.1


class ScriptedRuntime(runtime_pb2_grpc.RuntimeServicer):
    """Generate streams NUM_CHUNKS chunks slowly; GetStatus raises what `fail_with` holds."""

    def __init__(self) -> None:
        self.fail_with: BaseException | None = None
        self.completed_streams = 0

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for i in range(NUM_CHUNKS):
            await asyncio.sleep(CHUNK_INTERVAL_S)
            yield runtime_pb2.GenerateResponse(request_id=request.request_id, token_ids=[i])
        self.completed_streams += 1

    async def GetStatus(self, request: Any, context: Any) -> Any:
        if self.fail_with is not None:
            raise self.fail_with
        return runtime_pb2.GetStatusResponse(num_running=1)


def run_with_daemon(
    body: Callable[[Daemon, grpc.aio.Channel, ScriptedRuntime], Awaitable[None]],
    **config: Any,
) -> None:
    async def main() -> None:
        daemon = Daemon("test", ServerConfig(port=0, **config))
        servicer = ScriptedRuntime()
        daemon.add_service(
            Service("llmserve.v1.Runtime", servicer, runtime_pb2_grpc.add_RuntimeServicer_to_server)
        )
        await daemon.start()
        await daemon.set_serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.port}") as channel:
                await body(daemon, channel, servicer)
        finally:
            if not daemon.draining:
                await daemon.drain()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("exc", "code", "message", "reason", "fields"),
    [
        (
            errors.InvalidArgument(
                "sampling.top_p must be in (0, 1], got 2", field="sampling.top_p"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sampling.top_p must be in (0, 1], got 2",
            "INVALID_FIELD",
            ["sampling.top_p"],
        ),
        (
            errors.NotFound("adapter 'x' is not loaded", reason=Reason.ADAPTER_NOT_FOUND),
            grpc.StatusCode.NOT_FOUND,
            "adapter 'x' is not loaded",
            "ADAPTER_NOT_FOUND",
            [],
        ),
        (
            errors.FailedPrecondition("engine is for sm_90, device is sm_80"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "engine is for sm_90, device is sm_80",
            "FAILED_PRECONDITION",
            [],
        ),
        (
            RuntimeError("boom"),
            grpc.StatusCode.INTERNAL,
            "internal error: RuntimeError: boom",
            "INTERNAL",
            [],
        ),
        (NotImplementedError("later"), grpc.StatusCode.UNIMPLEMENTED, "later", "UNIMPLEMENTED", []),
    ],
)
def test_exceptions_map_to_status_with_details(
    exc: BaseException, code: grpc.StatusCode, message: str, reason: str, fields: list[str]
) -> None:
    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        servicer.fail_with = exc
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetStatus(runtime_pb2.GetStatusRequest())
        assert err.value.code() == code
        assert err.value.details() == message
        decoded = decode(err.value)
        assert (decoded.reason, decoded.domain, decoded.fields) == (reason, "llmserve.dev", fields)
        assert decoded.retry_delay_s is None
        # The server keeps serving after the error.
        servicer.fail_with = None
        assert (await stub.GetStatus(runtime_pb2.GetStatusRequest())).num_running == 1

    run_with_daemon(body)


def test_retry_hint_reaches_the_client_as_retry_info() -> None:
    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        servicer.fail_with = errors.ResourceExhausted(
            "rate limit of 10 requests/s exceeded", reason=Reason.RATE_LIMITED, retry_after_s=0.25
        )
        call = runtime_pb2_grpc.RuntimeStub(channel).GetStatus(runtime_pb2.GetStatusRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        decoded = decode(err.value)
        assert decoded.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (decoded.reason, decoded.retry_delay_s) == ("RATE_LIMITED", 0.25)

    run_with_daemon(body)


def test_drain_lets_streams_finish_and_refuses_new_calls() -> None:
    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def collect(i: int) -> list[int]:
            tokens: list[int] = []
            async for chunk in stub.Generate(runtime_pb2.GenerateRequest(request_id=str(i))):
                tokens.extend(chunk.token_ids)
            return tokens

        streams = [asyncio.create_task(collect(i)) for i in range(4)]
        await asyncio.sleep(CHUNK_INTERVAL_S * 1.5)  # streams are mid-way
        drain = asyncio.create_task(daemon.drain())
        await asyncio.sleep(0.05)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="llmserve.v1.Runtime"))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetStatus(runtime_pb2.GetStatusRequest())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in err.value.details()
        decoded = decode(err.value)
        assert decoded.reason == "DRAINING" and decoded.retry_delay_s == 1.0
        assert [await s for s in streams] == [list(range(NUM_CHUNKS))] * 4
        await drain
        assert servicer.completed_streams == 4

    run_with_daemon(body, grace_period_s=10)


def test_grace_period_bounds_the_drain() -> None:
    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        call = stub.Generate(runtime_pb2.GenerateRequest(request_id="slow"))
        await call.read()  # in flight
        started = time.monotonic()
        await daemon.drain()
        elapsed = time.monotonic() - started
        assert elapsed < CHUNK_INTERVAL_S * NUM_CHUNKS
        with pytest.raises(grpc.aio.AioRpcError):
            while await call.read() is not grpc.aio.EOF:
                pass
        assert servicer.completed_streams == 0

    run_with_daemon(body, grace_period_s=0.15)


def test_message_size_limit() -> None:
    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        prompt = common_pb2.Prompt(text="x" * 4096)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(runtime_pb2.GenerateRequest(prompt=prompt)):
                pass
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    run_with_daemon(body, max_message_bytes=2048)


def test_reflection_v1_and_v1alpha_list_services() -> None:
    async def body(daemon: Daemon, channel: grpc.aio.Channel, servicer: ScriptedRuntime) -> None:
        for service in (
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ):
            call = channel.stream_stream(
                f"/{service}/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )()
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            reply = await call.read()
            await call.done_writing()
            names = {s.name for s in reply.list_services_response.service}
            assert {"llmserve.v1.Runtime", "grpc.health.v1.Health", service} <= names

    run_with_daemon(body)
