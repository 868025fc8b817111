"""Rendering the Helm chart into objects, through Helm's own Go SDK (helm-python-sdk)."""

from __future__ import annotations

from typing import Any

import yaml

from llmserve.processes import REPO_ROOT

CHART = REPO_ROOT / "deploy" / "helm" / "llmserve"
EXAMPLES = sorted((REPO_ROOT / "deploy" / "helm" / "examples").glob("*.yaml"))
WORKLOADS = ("Deployment", "StatefulSet")


def helm() -> Any:
    import helm_python

    return helm_python


def render(values: dict[str, Any], *, with_tests: bool = True) -> list[dict[str, Any]]:
    """Every object the chart renders for these values (the helm test pod included)."""
    chart = helm().Chart.load(str(CHART))
    manifests = chart.render(values, name="demo", namespace="ml")
    return [
        doc
        for path, text in manifests.items()
        if not path.endswith(".txt") and (with_tests or "/tests/" not in path)
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def notes(values: dict[str, Any]) -> str:
    chart = helm().Chart.load(str(CHART))
    manifests = chart.render(values, name="demo", namespace="ml")
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def example_values(path: Any) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """component -> pod spec of each workload."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in WORKLOADS
    }


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        c["name"]: c
        for d in docs
        if d["kind"] in WORKLOADS
        for c in d["spec"]["template"]["spec"]["containers"]
    }


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}
