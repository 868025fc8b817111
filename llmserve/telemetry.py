"""Traces (OpenTelemetry, W3C traceparent in gRPC metadata) and Prometheus metrics."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
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
    service_name: str,
    otlp_endpoint: str = "",
    trace_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    install: bool = True,
) -> TracerProvider:
    """Installs the global tracer provider, configured by OpenTelemetry's standard variables
    (docs/operations.md), the project's flags overriding them:

    - `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`: the resource; `service_name` (the
      daemon's) only when they name no service.
    - `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`: the sampler (default: parent-based,
      always on).
    - `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`, `_PROTOCOL` (grpc or http/protobuf, default grpc
      as in OpenTelemetry Python), `_HEADERS`, `_CERTIFICATE`, `_TIMEOUT`, `_COMPRESSION`:
      the exporter reads them. An https endpoint is TLS (verified against the system roots or
      `OTEL_EXPORTER_OTLP_CERTIFICATE`); http is plaintext.
    - `otlp_endpoint` (the --otlp-endpoint flag) replaces the endpoint; without a scheme it
      means plaintext (http://), as it always has.
    - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: no OTLP export.

    `environ` (default os.environ) decides whether and how to export; the SDK's resource,
    sampler and exporters read the rest from os.environ themselves. `install=False` leaves the
    global provider alone (tests).
    """
    env = os.environ if environ is None else environ
    resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
    exporter = otlp_exporter(otlp_endpoint, env)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if trace_file is not None:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    if install:  # the global provider (set once per process)
        trace.set_tracer_provider(provider)
    return provider


def _env(env: Mapping[str, str], name: str) -> str:
    """A signal-specific variable (OTEL_EXPORTER_OTLP_TRACES_X) or its general form."""
    return (
        env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}") or ""
    ).strip()


def otlp_exporter(flag_endpoint: str, env: Mapping[str, str]) -> SpanExporter | None:
    """The OTLP span exporter the flag and the variables ask for, or None."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if not flag_endpoint and not _env(env, "ENDPOINT"):
        return None
    protocol = _env(env, "PROTOCOL") or "grpc"
    endpoint = flag_endpoint
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        # Without an endpoint argument the exporter reads the variables; the scheme of the
        # endpoint decides TLS (https) or plaintext (http).
        return GrpcExporter(endpoint=endpoint or None)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        if endpoint:
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=endpoint or None)
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use grpc or http/protobuf"
    )


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
