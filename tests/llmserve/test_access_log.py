"""One access-log line per call (parsed as JSON, as the daemons write it), trace ids on every
record made inside a call's span, the RPC metrics, and spans that end cleanly when a stream is
cancelled between two of its messages (no "Failed to detach context")."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from llmserve import errors
from llmserve.logs import JsonFormatter, TraceContextFilter
from llmserve.server import Daemon, ServerConfig, Service
from llmserve.server.access_log import annotate
from llmserve.v1 import runtime_pb2, runtime_pb2_grpc

log = logging.getLogger("tests.handler")
TRACE_ID, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class SteppedRuntime(runtime_pb2_grpc.RuntimeServicer):
    """Generate sends a chunk each time `step` is set; its end is signalled by `closed`."""

    def __init__(self) -> None:
        self.step = asyncio.Event()
        self.closed = asyncio.Event()

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        annotate(request_id=request.request_id, tokens_in=7, session_id="", owner=None)
        try:
            for i in range(3):
                await self.step.wait()
                self.step.clear()
                log.info("chunk %d", i)
                annotate(tokens_out=i + 1)
                yield runtime_pb2.GenerateResponse(request_id=request.request_id, token_ids=[i])
        finally:
            log.info("handler closed")
            self.closed.set()

    async def GetStatus(self, request: Any, context: Any) -> Any:
        log.info("status asked")
        raise errors.NotFound("nothing here")


class Lines(logging.Handler):
    """Keeps each record as the daemon's JSON formatter writes it, parsed back."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.addFilter(TraceContextFilter())
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(self.format(record)))

    def access(self, method: str) -> list[dict[str, Any]]:
        return [
            e for e in self.entries if e["logger"] == "llmserve.access" and e["method"] == method
        ]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def serve(body: Callable[[grpc.aio.Channel, SteppedRuntime], Awaitable[None]]) -> None:
    async def main() -> None:
        daemon = Daemon("test", ServerConfig(port=0))
        servicer = SteppedRuntime()
        add = runtime_pb2_grpc.add_RuntimeServicer_to_server
        daemon.add_service(Service("llmserve.v1.Runtime", servicer, add))
        await daemon.start()
        await daemon.set_serving()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{daemon.port}") as channel:
                await body(channel, servicer)
        finally:
            await daemon.drain()

    asyncio.run(main())


def rpc_count(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "llmserve_rpc_requests_total", {"method": method, "code": code}
    )
    return value or 0.0


GENERATE = "llmserve.v1.Runtime/Generate"


def test_a_stream_logs_one_line_with_its_ids(lines: Lines, spans: InMemorySpanExporter) -> None:
    before = rpc_count(GENERATE, "OK")

    async def body(channel: grpc.aio.Channel, servicer: SteppedRuntime) -> None:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        metadata = [("traceparent", f"00-{TRACE_ID}-{PARENT}-01")]
        call = stub.Generate(runtime_pb2.GenerateRequest(request_id="r-1"), metadata=metadata)
        for _ in range(3):
            servicer.step.set()
            await call.read()
        assert await call.read() is grpc.aio.EOF
        await servicer.closed.wait()

    serve(body)
    (line,) = lines.access(GENERATE)
    assert line["level"] == "info" and line["code"] == "OK"
    assert line["request_id"] == "r-1" and line["tokens_in"] == 7 and line["tokens_out"] == 3
    assert "session_id" not in line and "owner" not in line  # empty values are left out
    assert line["duration_ms"] > 0 and line["peer"]
    assert line["trace_id"] == TRACE_ID  # the caller's trace continues
    handler_lines = [e for e in lines.entries if e["logger"] == "tests.handler"]
    assert len(handler_lines) == 4  # three chunks and the close
    assert {(e["trace_id"], e["span_id"]) for e in handler_lines} == {(TRACE_ID, line["span_id"])}
    (span,) = [s for s in spans.get_finished_spans() if s.name == GENERATE]
    assert format(span.context.span_id, "016x") == line["span_id"]
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert rpc_count(GENERATE, "OK") == before + 1


def test_a_cancelled_stream_ends_its_span_cleanly(
    lines: Lines, spans: InMemorySpanExporter
) -> None:
    async def body(channel: grpc.aio.Channel, servicer: SteppedRuntime) -> None:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        call = stub.Generate(runtime_pb2.GenerateRequest(request_id="r-2"))
        servicer.step.set()
        await call.read()  # the handler is parked at its yield now, or waiting for a step
        call.cancel()
        await servicer.closed.wait()

    serve(body)
    (line,) = lines.access(GENERATE)
    assert line["code"] == "CANCELLED" and line["request_id"] == "r-2"
    assert line["tokens_out"] == 1
    closed = [e for e in lines.entries if e["message"] == "handler closed"]
    assert closed and closed[0]["span_id"] == line["span_id"]  # its finally ran in the span
    assert not [e for e in lines.entries if e["level"] == "error"], lines.entries
    (span,) = [s for s in spans.get_finished_spans() if s.name == GENERATE]
    assert span.end_time is not None and not span.status.is_ok


def test_a_refused_unary_call_logs_its_code(lines: Lines) -> None:
    method = "llmserve.v1.Runtime/GetStatus"
    before = rpc_count(method, "NOT_FOUND")

    async def body(channel: grpc.aio.Channel, servicer: SteppedRuntime) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await runtime_pb2_grpc.RuntimeStub(channel).GetStatus(runtime_pb2.GetStatusRequest())
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    serve(body)
    (line,) = lines.access(method)
    assert line["code"] == "NOT_FOUND" and len(line["trace_id"]) == 32
    (inside,) = [e for e in lines.entries if e["message"] == "status asked"]
    assert inside["trace_id"] == line["trace_id"]
    assert rpc_count(method, "NOT_FOUND") == before + 1


def test_a_stream_past_its_deadline_logs_deadline_exceeded(lines: Lines) -> None:
    async def body(channel: grpc.aio.Channel, servicer: SteppedRuntime) -> None:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        call = stub.Generate(runtime_pb2.GenerateRequest(request_id="r-3"), timeout=0.5)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()  # no step is ever given: the deadline ends the call
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await servicer.closed.wait()

    serve(body)
    (line,) = lines.access(GENERATE)
    assert line["code"] == "DEADLINE_EXCEEDED" and line["request_id"] == "r-3"
