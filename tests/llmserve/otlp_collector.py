"""An in-process stand-in for an OpenTelemetry collector: it receives OTLP trace exports over
gRPC (plaintext or TLS) or over HTTP (http/protobuf, POST /v1/traces) and keeps the spans, the
resources they came with and the headers of each export."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from llmserve.processes import free_port


@dataclass
class ReceivedSpan:
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    trace_id: str  # hex
    span_id: str
    parent_span_id: str
    resource: dict[str, Any]
    attributes: dict[str, Any]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class Collector:
    """What was received; `wait_for` blocks (bounded) until a predicate holds."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def receive(self, request: Any, headers: dict[str, str]) -> None:
        got = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        ReceivedSpan(
                            s.name,
                            s.kind,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            resource,
                            {a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        with self._cond:
            self.spans.extend(got)
            self.headers.append(headers)
            self._cond.notify_all()

    def wait_for(
        self, check: Callable[[list[ReceivedSpan]], bool], timeout: float = 60.0
    ) -> list[ReceivedSpan]:
        """The spans once `check(spans)` holds; the timeout only guards against a hang."""
        with self._cond:
            if not self._cond.wait_for(lambda: check(self.spans), timeout):
                names = [s.name for s in self.spans]
                raise AssertionError(f"the collector did not get the spans; it has {names}")
            return list(self.spans)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.collector.receive(request, headers)
        return trace_service_pb2.ExportTraceServiceResponse()


class GrpcCollector(Collector):
    """OTLP/gRPC on 127.0.0.1; TLS with (key PEM, certificate PEM) when given."""

    def __init__(self, tls: tuple[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self.server)
        address = f"127.0.0.1:{self.port}"
        if tls is None:
            self.server.add_insecure_port(address)
        else:
            self.server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


class HttpCollector(Collector):
    """OTLP/HTTP (binary protobuf) on 127.0.0.1: POST /v1/traces."""

    def __init__(self) -> None:
        super().__init__()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                collector.receive(request, {k.lower(): v for k, v in self.headers.items()})
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
