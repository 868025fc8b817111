"""Traces (OpenTelemetry, W3C traceparent in gRPC metadata) and Prometheus metrics."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to a file as one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        with self._lock, self._path.open("a", encoding="utf-8") as f:
            f.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def setup_tracing(
    service_name: str, otlp_endpoint: str = "", trace_file: Path | None = None
) -> TracerProvider:
    """Installs the global tracer provider; spans go to OTLP and/or a file when configured."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True))
        )
    if trace_file is not None:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing() -> None:
    """Flushes and stops the span processors of the global provider, if it is ours."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def context_from_metadata(metadata: Metadata | None) -> otel_context.Context:
    """The trace context a caller sent in gRPC metadata (traceparent/tracestate).

    Binary (`-bin`) headers never carry it and are skipped: their bytes may be anything."""
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str) and not key.lower().endswith("-bin"):
            carrier[key.lower()] = value
    return propagate.extract(carrier)


def metadata_from_context(ctx: otel_context.Context | None = None) -> list[tuple[str, str]]:
    """gRPC metadata carrying the current (or given) trace context to a downstream call."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return list(carrier.items())


def start_metrics_server(port: int, addr: str) -> None:
    """Serves the Prometheus registry over HTTP on `addr`:`port` (no-op for port 0)."""
    if port:
        import prometheus_client

        prometheus_client.start_http_server(port, addr=addr)
        log.info("metrics on http://%s:%d/metrics", addr, port)


def span_attributes(pairs: Iterable[tuple[str, object]]) -> dict[str, str | int | float | bool]:
    """Keeps only the attribute values OpenTelemetry accepts."""
    return {k: v for k, v in pairs if isinstance(v, str | int | float | bool)}
