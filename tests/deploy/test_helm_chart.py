"""The Helm chart lints, renders, and sets only settings the daemons really have."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from builder_service.config import BuilderConfig
from gateway.config import GatewayConfig
from llmserve.config import env_name, parse_config
from runtime_service.config import RuntimeConfig
from tests.deploy.chart import CHART, containers, pod_specs, render

helm = pytest.importorskip("helm_python")

CONFIGS = {"builder": BuilderConfig, "runtime": RuntimeConfig, "gateway": GatewayConfig}
# Settings the chart already passes whose daemon code lands with a later issue. Each entry
# must NOT be a setting yet (the test fails once it is, so the list shrinks as issues land).
PENDING: dict[str, set[str]] = {
    "runtime": set(),
    "gateway": set(),
    "builder": set(),
}
BASE_VALUES = {"model": {"engineId": "0123abcd"}}


def test_lint_is_clean() -> None:
    report = helm.lint(str(CHART), BASE_VALUES, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_renders_every_component() -> None:
    docs = render(BASE_VALUES)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "demo-llmserve-builder"),
        ("Service", "demo-llmserve-builder"),
        ("StatefulSet", "demo-llmserve-runtime"),
        ("Service", "demo-llmserve-runtime-headless"),
        ("Deployment", "demo-llmserve-gateway"),
        ("Service", "demo-llmserve-gateway"),
        ("StatefulSet", "demo-llmserve-redis"),
        ("PersistentVolumeClaim", "demo-llmserve-store"),
    } <= kinds
    runtime = containers(docs)["runtime"]
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert runtime["readinessProbe"]["grpc"]["port"] == 50052
    headless = next(d for d in docs if d["metadata"]["name"] == "demo-llmserve-runtime-headless")
    assert headless["spec"]["clusterIP"] == "None"


def test_every_env_setting_is_a_daemon_setting() -> None:
    docs = render(BASE_VALUES)
    for name, config in CONFIGS.items():
        settings = {env_name(f.name) for f in dataclasses.fields(config)}
        env = {e["name"] for e in containers(docs)[name]["env"] if e["name"].startswith("LLMSERVE")}
        assert PENDING[name].isdisjoint(settings), "now a setting: drop it from PENDING"
        assert env - settings - PENDING[name] == set(), name
        assert "LLMSERVE_PORT" in env


def test_lora_settings_reach_the_runtime_and_builder() -> None:
    off = {e["name"] for e in containers(render(BASE_VALUES))["runtime"]["env"]}
    assert "LLMSERVE_ENABLE_LORA" not in off
    values = {**BASE_VALUES, "runtime": {"lora": {"enabled": True, "maxLoras": 16}}}
    docs = render(values)
    runtime = {e["name"]: e["value"] for e in containers(docs)["runtime"]["env"] if "value" in e}
    assert (runtime["LLMSERVE_ENABLE_LORA"], runtime["LLMSERVE_MAX_LORAS"]) == ("true", "16")
    assert runtime["LLMSERVE_MAX_LORA_RANK"] == "64"
    builder = {e["name"]: e.get("value") for e in containers(docs)["builder"]["env"]}
    assert builder["LLMSERVE_MAX_LORA_RANK"] == "64"
    parsed = parse_config(RuntimeConfig, [], env=runtime)  # as the daemon reads them
    assert parsed.enable_lora and parsed.max_loras == 16


def test_tensor_parallel_size_requests_its_gpus_and_reaches_the_runtime() -> None:
    default = containers(render(BASE_VALUES))["runtime"]
    assert "LLMSERVE_TENSOR_PARALLEL_SIZE" not in {e["name"] for e in default["env"]}
    values = {**BASE_VALUES, "runtime": {"tensorParallelSize": 4}}
    runtime = containers(render(values))["runtime"]
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert runtime["resources"]["limits"]["memory"] == "64Gi"  # the other limits stay
    env = {e["name"]: e["value"] for e in runtime["env"] if "value" in e}
    assert env["LLMSERVE_TENSOR_PARALLEL_SIZE"] == "4"
    assert parse_config(RuntimeConfig, [], env=env).tensor_parallel_size == 4


def test_kernel_cache_is_a_volume_the_runtime_points_triton_at() -> None:
    def runtime(kernel_cache: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        values = {**BASE_VALUES, "runtime": {"kernelCache": kernel_cache}}
        docs = render(values)
        volumes = {v["name"]: v for v in pod_specs(docs)["runtime"]["volumes"]}
        container = containers(docs)["runtime"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert env["LLMSERVE_KERNEL_CACHE_DIR"].startswith(mounts["kernel-cache"] + "/")
        parsed = parse_config(RuntimeConfig, [], env=env)  # as the daemon reads them
        assert str(parsed.kernel_cache_dir) == env["LLMSERVE_KERNEL_CACHE_DIR"]
        return volumes["kernel-cache"], env

    assert runtime({})[0] == {"name": "kernel-cache", "emptyDir": {}}
    host, _ = runtime({"hostPath": "/var/cache/k"})
    assert host["hostPath"] == {"path": "/var/cache/k", "type": "DirectoryOrCreate"}
    claim, _ = runtime({"existingClaim": "kernels"})
    assert claim["persistentVolumeClaim"] == {"claimName": "kernels"}


def test_http_api_is_off_by_default_and_reaches_the_gateway_when_enabled() -> None:
    def gateway(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
        docs = render(values)
        container = containers(docs)["gateway"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        service = next(
            d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("gateway")
        )
        return env, {p["name"]: p for p in container["ports"]}, service["spec"]["ports"]

    env, ports, service_ports = gateway(BASE_VALUES)
    assert "LLMSERVE_HTTP_PORT" not in env and "http" not in ports
    assert [p["name"] for p in service_ports] == ["grpc"]
    env, ports, service_ports = gateway(
        {**BASE_VALUES, "gateway": {"http": {"enabled": True, "port": 8080}}}
    )
    assert env["LLMSERVE_HTTP_PORT"] == "8080" and ports["http"]["containerPort"] == 8080
    http = next(p for p in service_ports if p["name"] == "http")
    assert (http["port"], http["targetPort"]) == (8080, "http")
    assert parse_config(GatewayConfig, [], env=env).http_port == 8080  # as the daemon reads it


def test_s3_store_and_external_redis() -> None:
    values = {
        **BASE_VALUES,
        "store": {
            "type": "s3",
            "s3": {
                "uri": "s3://bucket/p",
                "endpointUrl": "http://minio:9000",
                "credentialsSecret": "s3-creds",
            },
        },
        "redis": {"enabled": False, "url": "redis://redis.cache:6379/0"},
    }
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert "PersistentVolumeClaim" not in kinds and "StatefulSet" in kinds
    builder_env = {e["name"]: e for e in containers(docs)["builder"]["env"]}
    assert builder_env["LLMSERVE_STORE"]["value"] == "s3://bucket/p"
    assert builder_env["AWS_ENDPOINT_URL_S3"]["value"] == "http://minio:9000"
    assert builder_env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    gateway_env = {e["name"]: e.get("value") for e in containers(docs)["gateway"]["env"]}
    assert gateway_env["LLMSERVE_REDIS"] == "redis://redis.cache:6379/0"
    assert "REDIS_PASSWORD" not in gateway_env
    assert "demo-llmserve-redis" not in {d["metadata"]["name"] for d in docs}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"model": {"source": "", "name": "", "engineId": ""}},
            "model.source (or model.name, or model.engineId) is required",
        ),
        ({**BASE_VALUES, "store": {"type": "nfs"}}, "value must be one of 'local', 's3'"),
        ({"runtime": {"replicas": "two"}}, "at '/runtime/replicas': got string, want integer"),
        (
            {**BASE_VALUES, "runtime": {"tensorParallelSize": 0}},
            "at '/runtime/tensorParallelSize': minimum: got 0, want 1",
        ),
        (
            {**BASE_VALUES, "redis": {"enabled": False}},
            "redis.url (or redis.urlSecret) is required",
        ),
    ],
)
def test_bad_values_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as err:
        render(values)
    assert message in str(err.value)
