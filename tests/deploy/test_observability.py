"""Observability in deploy/: the Grafana dashboard (the chart's dashboards/llmserve.json) is
built from the metrics the daemons export (every series and label its queries name exists in
the code); the chart ships it as a ConfigMap when asked and passes OTEL_* variables to every
daemon; docs/operations.md describes every metric."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import gateway.metrics as gateway_metrics
from llmserve.processes import REPO_ROOT
from llmserve.server import access_log
from runtime_service.engine.core import EngineStats
from runtime_service.metrics import EngineCollector, RuntimeMetrics
from tests.deploy.chart import CHART, containers, env, find, helm, render

DASHBOARD = CHART / "dashboards" / "llmserve.json"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def declared() -> dict[str, set[str]]:
    """Every queryable series name of the daemons -> its label names."""
    series: dict[str, set[str]] = {}

    def add(name: str, kind: str, labels: set[str]) -> None:
        for suffix in SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            series[name + suffix] = labels | extra

    runtime = RuntimeMetrics(CollectorRegistry())
    objects = [*vars(runtime).values(), *vars(gateway_metrics).values()]
    objects += [access_log.RPC_REQUESTS, access_log.RPC_DURATION]
    for obj in objects:
        if isinstance(obj, Counter | Gauge | Histogram):
            add(obj._name, obj._type, set(obj._labelnames))
    fields = {f.name: 1 for f in dataclasses.fields(EngineStats)}
    for family in EngineCollector("m", lambda: EngineStats(**fields), lambda: 0).collect():
        labels = {k for s in family.samples for k in s.labels}
        add(family.name, family.type, labels)
    return series


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_query_names_exported_series_and_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    series = declared()
    exprs = queries(dashboard)
    assert len(exprs) >= 20
    used = set()
    for expr in exprs:
        for name, selector in re.findall(r"(llmserve_[a-z0-9_]+)(\{[^}]*\})?", expr):
            assert name in series, f"{name} is not exported (in {expr})"
            used.add(name)
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!=|!~|=)", selector):
                assert label in series[name], f"{name} has no label {label} (in {expr})"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                names = re.findall(r"llmserve_[a-z0-9_]+", expr)
                assert any(label in series[n] for n in names), f"no {label} in {expr}"
    # Every family appears in some panel.
    families = {re.sub(r"(_total|_bucket|_sum|_count)$", "", n) for n in series}
    shown = {re.sub(r"(_total|_bucket|_sum|_count)$", "", n) for n in used}
    assert families - shown == set()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "model_name"}


def test_operations_doc_lists_every_metric() -> None:
    text = OPERATIONS.read_text()
    families = {re.sub(r"(_total|_bucket|_sum|_count)$", "", n) for n in declared()}
    missing = sorted(f for f in families if f not in text)
    assert not missing, f"docs/operations.md does not describe {missing}"


def test_the_chart_ships_the_dashboard_when_asked() -> None:
    assert not [d for d in render({}) if d["kind"] == "ConfigMap" and "dashboard" in str(d)]
    values = {"metrics": {"grafanaDashboard": {"enabled": True}}}
    config_map = find(render(values), "ConfigMap", "demo-llmserve-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["llmserve.json"]) == json.loads(DASHBOARD.read_text())


def test_the_chart_passes_otel_variables_to_every_daemon() -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example:4317", "OTEL_SERVICE_NAME": "x"}
    docs = render({"telemetry": {"otelEnv": otel}})
    daemons = {n: c for n, c in containers(docs).items() if n in ("gateway", "runtime", "builder")}
    assert set(daemons) == {"gateway", "runtime", "builder"}
    for container in daemons.values():
        assert {k: env(container)[k]["value"] for k in otel} == otel
    with pytest.raises(helm().HelmError) as err:
        render({"telemetry": {"otelEnv": {"PATH": "/tmp"}}})
    assert "'PATH' does not match pattern '^OTEL_" in str(err.value)
