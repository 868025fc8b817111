"""Defaults and every example values file lint strictly, render, and validate against the
Kubernetes JSON schemas (kubernetes-validate) of the oldest and newest versions we support."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import CHART, EXAMPLES, example_values, helm, notes, render

kv = pytest.importorskip("kubernetes_validate")
pytest.importorskip("helm_python")

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# Custom resources: no schema in kubernetes-validate (their shape is asserted in the tests).
CUSTOM_KINDS = {"ServiceMonitor"}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    *[(p.stem, example_values(p)) for p in EXAMPLES],
]


def test_there_are_examples_for_one_gpu_node_and_s3() -> None:
    assert {p.name for p in EXAMPLES} >= {"one-gpu-node.yaml", "s3.yaml"}


@pytest.mark.parametrize(("case", "values"), CASES, ids=[c for c, _ in CASES])
def test_lints_strictly(case: str, values: dict[str, Any]) -> None:
    report = helm().lint(str(CHART), values, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(("case", "values"), CASES, ids=[c for c, _ in CASES])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_match_the_kubernetes_schemas(
    case: str, values: dict[str, Any], version: str
) -> None:
    docs = render(values)
    checked = 0
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kv.validate(doc, version, strict=True)  # raises ValidationError naming the field
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize(("case", "values"), CASES, ids=[c for c, _ in CASES])
def test_notes_render(case: str, values: dict[str, Any]) -> None:
    text = notes(values)
    assert "helm test" in text
    assert ("-plaintext" in text) == (not values.get("gateway", {}).get("tlsSecret"))


def test_notes_show_tls_when_the_gateway_serves_it() -> None:
    text = notes({"gateway": {"tlsSecret": "gw-tls", "mtls": True}})
    assert "-plaintext" not in text and "-cacert ca.crt -cert client.crt" in text
