"""A daemon configured ONLY by OpenTelemetry's standard variables exports its spans to a
collector (an in-process stand-in): over gRPC, over HTTP, and over TLS when the endpoint is
https; the service name, resource attributes and headers are the variables' ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from llmserve.processes import DaemonProcess
from llmserve.telemetry import otlp_exporter, setup_tracing
from llmserve.v1 import builder_pb2, builder_pb2_grpc
from tests.gateway.test_gateway_tls import issue
from tests.llmserve.otlp_collector import Collector, GrpcCollector, HttpCollector

SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER


def start_builder(tmp: Path, env: dict[str, str]) -> DaemonProcess:
    args = ["--store", str(tmp / "store"), "--work-dir", str(tmp / "work")]
    base = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # export soon after each span ends
    proc = DaemonProcess("builder_service", args, env={**base, **env}, log_path=tmp / "b.log")
    proc.start().wait_serving()
    return proc


def call_and_collect(proc: DaemonProcess, collector: Collector) -> list:
    with grpc.insecure_channel(proc.address) as channel:
        stub = builder_pb2_grpc.BuilderStub(channel)
        stub.ListEngines(builder_pb2.ListEnginesRequest(), timeout=30)
        # A streaming call that fails: its span must still end (and be exported).
        with pytest.raises(grpc.RpcError):
            list(stub.Build(builder_pb2.BuildRequest(source="/no/such/model"), timeout=30))

    def done(spans: list) -> bool:
        names = {s.name for s in spans}
        return {"llmserve.v1.Builder/ListEngines", "llmserve.v1.Builder/Build"} <= names

    return collector.wait_for(done)


def env_for(endpoint: str, protocol: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=team-a",
        "OTEL_SERVICE_NAME": "builder-eu-1",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.namespace=llm",
    }


def check(spans: list, collector: Collector) -> None:
    ours = [s for s in spans if s.name.startswith("llmserve.v1.Builder/")]
    assert ours and all(s.kind == SERVER for s in ours)
    resource = ours[0].resource
    assert resource["service.name"] == "builder-eu-1"
    assert resource["deployment.environment"] == "test"
    assert resource["service.namespace"] == "llm"
    build = next(s for s in ours if s.name == "llmserve.v1.Builder/Build")
    assert build.attributes["rpc.grpc.status_code"] != 0  # ended with the call's error
    assert all(h.get("x-tenant") == "team-a" for h in collector.headers)


@pytest.fixture
def grpc_collector() -> Iterator[GrpcCollector]:
    c = GrpcCollector()
    yield c
    c.stop()


def test_otlp_grpc_by_variables_only(tmp_path: Path, grpc_collector: GrpcCollector) -> None:
    env = env_for(f"http://127.0.0.1:{grpc_collector.port}", "grpc")
    proc = start_builder(tmp_path, env)
    try:
        check(call_and_collect(proc, grpc_collector), grpc_collector)
    finally:
        proc.terminate()
    assert "Failed to detach context" not in (tmp_path / "b.log").read_text()


def test_otlp_http_by_variables_only(tmp_path: Path) -> None:
    collector = HttpCollector()
    proc = start_builder(tmp_path, env_for(f"http://127.0.0.1:{collector.port}", "http/protobuf"))
    try:
        check(call_and_collect(proc, collector), collector)
    finally:
        proc.terminate()
        collector.stop()


def test_https_endpoint_is_tls(tmp_path: Path) -> None:
    ca = issue(tmp_path, "otel-ca", None)
    cert, key = issue(tmp_path, "collector", ca)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    collector = GrpcCollector(tls=(key_pem, cert.public_bytes(serialization.Encoding.PEM)))
    ca_file = tmp_path / "otel-ca.pem"
    ca_file.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    env = env_for(f"https://127.0.0.1:{collector.port}", "grpc")
    env["OTEL_EXPORTER_OTLP_CERTIFICATE"] = str(ca_file)
    proc = start_builder(tmp_path, env)
    try:
        check(call_and_collect(proc, collector), collector)
    finally:
        proc.terminate()
        collector.stop()


def test_sampler_and_service_name_come_from_the_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-blue")
    provider = setup_tracing("gateway", install=False)
    try:
        assert isinstance(provider, TracerProvider)
        assert isinstance(provider.sampler, ParentBased)
        root = provider.sampler._root  # the sampler of traces that start here
        assert isinstance(root, TraceIdRatioBased) and root.rate == 0.25
        assert provider.resource.attributes["service.name"] == "gw-blue"
    finally:
        provider.shutdown()
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    provider = setup_tracing("gateway", install=False)  # no variable: the daemon's own name
    assert provider.resource.attributes["service.name"] == "gateway"
    provider.shutdown()


def test_nothing_exported_without_an_endpoint_and_the_flag_overrides() -> None:
    assert otlp_exporter("", {}) is None
    assert (
        otlp_exporter(
            "", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}
        )
        is None
    )
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        otlp_exporter("c:4317", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
