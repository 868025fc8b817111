"""Each hardening point of the chart, asserted on the rendered objects."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.deploy.chart import containers, env, find, pod_specs, render

pytest.importorskip("helm_python")

DAEMONS = ("builder", "runtime", "gateway")


def test_first_install_needs_only_a_model_source() -> None:
    docs = render({"model": {"source": "s3://models/qwen3-8b/"}})
    runtime = env(containers(docs)["runtime"])
    assert runtime["LLMSERVE_MODEL_SOURCE"]["value"] == "s3://models/qwen3-8b/"
    assert runtime["LLMSERVE_QUANTIZATION"]["value"] == "none"
    assert runtime["LLMSERVE_BUILDER"]["value"] == "demo-llmserve-builder:50053"
    assert "LLMSERVE_ENGINE" not in runtime
    pinned = env(containers(render({"model": {"engineId": "ab12"}}))["runtime"])
    assert pinned["LLMSERVE_ENGINE"]["value"] == "ab12"


def test_without_a_builder_the_runtimes_wait_when_asked() -> None:
    values = {"builder": {"enabled": False}, "model": {"name": "m", "waitForEngine": True}}
    runtime = env(containers(render(values))["runtime"])
    assert runtime["LLMSERVE_WAIT_FOR_ENGINE"]["value"] == "true"
    assert "LLMSERVE_BUILDER" not in runtime


def test_pods_run_as_non_root_on_a_read_only_root_without_capabilities() -> None:
    docs = render({})
    pods = {**pod_specs(docs), "test": find(docs, "Pod", "demo-llmserve-test-gateway")["spec"]}
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert name == "redis" or "/tmp" in mounts, name  # writable scratch


def test_every_container_has_requests_and_memory_limits() -> None:
    for name, c in containers(render({})).items():
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
        assert "memory" in c["resources"]["limits"], name
    assert containers(render({}))["runtime"]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_dev_shm_is_a_memory_volume_of_the_size_asked() -> None:
    docs = render({"runtime": {"shmSize": "16Gi"}})
    volumes = {v["name"]: v for v in pod_specs(docs)["runtime"]["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    mounts = {m["name"]: m["mountPath"] for m in containers(docs)["runtime"]["volumeMounts"]}
    assert mounts["shm"] == "/dev/shm"


def test_the_builder_can_have_a_gpu() -> None:
    cpu = containers(render({}))["builder"]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu
    docs = render({"builder": {"gpu": True}})
    assert containers(docs)["builder"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_specs(
        docs
    )["builder"]["tolerations"]


@pytest.mark.parametrize("component", ["runtime", "gateway"])
def test_disruption_budgets(component: str) -> None:
    pdb = find(render({}), "PodDisruptionBudget", f"demo-llmserve-{component}")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
    off = render({component: {"pdb": {"enabled": False}}})
    assert f"demo-llmserve-{component}" not in {
        d["metadata"]["name"] for d in off if d["kind"] == "PodDisruptionBudget"
    }


def _allowed(policy: dict[str, Any], port: int) -> list[Any] | None:
    """The `from` peers of the rule for a port (None: from anywhere)."""
    for rule in policy["spec"]["ingress"]:
        if any(p["port"] == port for p in rule["ports"]):
            return rule.get("from")
    raise AssertionError(f"port {port} not allowed at all")


def _components(peers: list[Any] | None) -> set[str]:
    assert peers is not None, "open to anyone"
    return {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers}


def test_redis_and_runtimes_are_reachable_only_from_gateway_and_builder() -> None:
    docs = render({})
    policy = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    assert _components(_allowed(policy["demo-llmserve-redis"], 6379)) == {"gateway"}
    assert _components(_allowed(policy["demo-llmserve-runtime"], 50052)) == {"gateway"}
    assert _components(_allowed(policy["demo-llmserve-builder"], 50053)) == {"runtime"}
    assert _allowed(policy["demo-llmserve-gateway"], 50051) is None  # the public entry
    assert _allowed(policy["demo-llmserve-runtime"], 9402) is None  # metrics: any scraper
    for p in policy.values():
        assert p["spec"]["policyTypes"] == ["Ingress"]
    narrowed = render({"networkPolicy": {"gatewayFrom": [{"namespaceSelector": {}}]}})
    gateway = find(narrowed, "NetworkPolicy", "demo-llmserve-gateway")
    assert _allowed(gateway, 50051)[0] == {"namespaceSelector": {}}  # type: ignore[index]
    assert "test" in _components(_allowed(gateway, 50051)[1:])  # type: ignore[index]


def test_redis_requires_a_password_from_a_secret_the_gateway_uses() -> None:
    docs = render({})
    secret = find(docs, "Secret", "demo-llmserve-redis")
    assert len(base64.b64decode(secret["data"]["redis-password"])) == 32
    redis = containers(docs)["redis"]
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    ref = {"name": "demo-llmserve-redis", "key": "redis-password"}
    assert env(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    gateway = containers(docs)["gateway"]
    names = [e["name"] for e in gateway["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("LLMSERVE_REDIS")  # $(…) expands
    assert env(gateway)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    url = env(gateway)["LLMSERVE_REDIS"]["value"]
    assert url == "redis://:$(REDIS_PASSWORD)@demo-llmserve-redis:6379/0"
    own = render({"redis": {"existingSecret": "mine"}})
    assert "Secret" not in {d["kind"] for d in own}
    assert (
        env(containers(own)["redis"])["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
        == "mine"
    )


def test_an_external_redis_url_can_come_from_a_secret() -> None:
    docs = render({"redis": {"enabled": False, "urlSecret": "redis-url"}})
    ref = env(containers(docs)["gateway"])["LLMSERVE_REDIS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "redis-url", "key": "redis-url"}


def test_values_are_type_checked() -> None:
    from tests.deploy.chart import helm

    for bad in ({"runtime": {"replicas": "two"}}, {"model": {"quantization": "q3"}}):
        with pytest.raises(helm().HelmError, match="values don't meet the specifications"):
            render(bad)


def test_service_monitor_scrapes_every_metrics_port() -> None:
    assert "ServiceMonitor" not in {d["kind"] for d in render({})}
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"r": "p"}}}})
    monitor = find(docs, "ServiceMonitor", "demo-llmserve-metrics")
    assert monitor["metadata"]["labels"]["r"] == "p"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "interval": "15s"}]
    service = find(docs, "Service", "demo-llmserve-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    selected = service["spec"]["selector"].items()
    for name, pod in pod_specs(docs).items():
        if name != "redis":
            assert any(p["name"] == "metrics" for p in pod["containers"][0]["ports"]), name
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert ("app.kubernetes.io/instance", "demo") in selected


def test_runtimes_scale_on_queue_length() -> None:
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in render({})}
    docs = render({"runtime": {"autoscaling": {"enabled": True, "maxReplicas": 6}}})
    hpa = find(docs, "HorizontalPodAutoscaler", "demo-llmserve-runtime")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "demo-llmserve-runtime",
    }
    assert hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "llmserve_queue_length"
    assert "replicas" not in find(docs, "StatefulSet", "demo-llmserve-runtime")["spec"]


@pytest.mark.parametrize("component", DAEMONS)
def test_grace_periods_follow_the_drain_settings_with_a_pre_stop_delay(component: str) -> None:
    values = {"preStopDelaySeconds": 7, component: {"gracePeriodSeconds": 40}}
    docs = render(values)
    pod = pod_specs(docs)[component]
    assert pod["terminationGracePeriodSeconds"] == 7 + 40 + 10
    c = containers(docs)[component]
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert env(c)["LLMSERVE_GRACE_PERIOD_S"]["value"] == "40"


def test_pod_annotations_labels_and_scheduling_settings() -> None:
    values = {
        "podAnnotations": {"sidecar.istio.io/inject": "true"},
        "podLabels": {"team": "ml"},
        "runtime": {
            "podAnnotations": {"proxy.istio.io/config": "{}"},
            "affinity": {"nodeAffinity": {}},
            "topologySpreadConstraints": [{"maxSkew": 1}],
            "priorityClassName": "gpu-high",
            "runtimeClassName": "nvidia",
        },
    }
    docs = render(values)
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            meta = d["spec"]["template"]["metadata"]
            assert meta["annotations"]["sidecar.istio.io/inject"] == "true"
            assert meta["labels"]["team"] == "ml"
    runtime = find(docs, "StatefulSet", "demo-llmserve-runtime")["spec"]["template"]
    assert runtime["metadata"]["annotations"]["proxy.istio.io/config"] == "{}"
    spec = runtime["spec"]
    assert (spec["priorityClassName"], spec["runtimeClassName"]) == ("gpu-high", "nvidia")
    assert spec["affinity"] == {"nodeAffinity": {}}
    assert spec["topologySpreadConstraints"] == [{"maxSkew": 1}]


def test_a_service_account_carries_the_irsa_role() -> None:
    arn = "arn:aws:iam::1:role/llmserve"
    docs = render({"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": arn}}})
    account = find(docs, "ServiceAccount", "demo-llmserve")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == arn
    for name, pod in pod_specs(docs).items():
        assert pod["serviceAccountName"] == "demo-llmserve", name


def test_helm_test_checks_the_gateway_health_and_models() -> None:
    pod = find(render({"gateway": {"apiKeysSecret": "keys"}}), "Pod", "demo-llmserve-test-gateway")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["args"]
    assert args == [
        "check",
        "--gateway=demo-llmserve-gateway:50051",
        "--api-key-file=/etc/llmserve/keys/api-keys",
    ]
    no_keys = find(render({}), "Pod", "demo-llmserve-test-gateway")
    assert no_keys["spec"]["containers"][0]["args"][-1] == "--min-models=0"


def test_the_gateway_can_run_the_slim_cpu_image() -> None:
    docs = render({"image": {"tag": "1.2.3"}, "gateway": {"imageTag": "1.2.3-cpu"}})
    images = {name: c["image"] for name, c in containers(docs).items()}
    assert images["gateway"] == "ghcr.io/llmserve/llmserve:1.2.3-cpu"
    assert images["runtime"] == images["builder"] == "ghcr.io/llmserve/llmserve:1.2.3"
