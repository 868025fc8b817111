"""The example clients of examples/clients/ against a running stack (redis-server, runtimes
serving SmolLM2, the gateway): the Node one (grpc-js, protos loaded at run time) gets the same
greedy tokens as the Python stubs, and its chat turn is stored in its session; it decodes the
google.rpc details of a refusal (ErrorInfo, BadRequest, RetryInfo) from the status trailer.
`llmserve check` (the chart's `helm test`) passes against the same gateway."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.check_cli import CheckConfig, run_checks
from llmserve.processes import REPO_ROOT, DaemonProcess, RedisServer
from llmserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.gateway.gateway_harness import CALL_TIMEOUT_S, MODEL, OWNERS, greedy, start_gateway

NODE_CLIENT = REPO_ROOT / "examples" / "clients" / "node"
PROMPT = "The capital of France is"
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer,
    runtimes: list[DaemonProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DaemonProcess, dict[str, str]]]:
    gateway, keys = start_gateway(tmp_path_factory.mktemp("clients"), redis_server, runtimes[:1])
    yield gateway, keys
    gateway.terminate()


def python_generate(address: str, key: str) -> list[int]:
    """The reference: the same request through grpcio's generated stubs."""
    request = gateway_pb2.GatewayGenerateRequest(
        model=MODEL, prompt=common_pb2.Prompt(text=PROMPT), sampling=greedy(MAX_TOKENS)
    )
    with grpc.insecure_channel(address) as channel:
        chunks = gateway_pb2_grpc.GatewayStub(channel).Generate(
            request, metadata=[("authorization", f"Bearer {key}")], timeout=CALL_TIMEOUT_S
        )
        return [t for c in chunks for t in c.token_ids]


def test_node_client_works_end_to_end(stack: tuple[DaemonProcess, dict[str, str]]) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed for the example client (apt-get install nodejs)"
    assert (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make setup`"
    gateway, keys = stack
    key = keys[OWNERS[0]]
    result = subprocess.run(
        [node, "client.js", "--gateway", gateway.address, "--prompt", PROMPT,
         "--max-tokens", str(MAX_TOKENS)],
        cwd=NODE_CLIENT,
        env={"PATH": "/usr/bin:/bin", "LLMSERVE_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=2 * CALL_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["health"] == "SERVING"
    assert out["models"] == [{"name": MODEL, "num_healthy_runtimes": 1}]
    assert out["generate"]["token_ids"] == python_generate(gateway.address, key)
    assert len(out["generate"]["token_ids"]) == MAX_TOKENS
    assert out["generate"]["finish_reason"] == "FINISH_REASON_LENGTH"
    with grpc.insecure_channel(gateway.address) as channel:
        session = (
            gateway_pb2_grpc.GatewayStub(channel)
            .GetSession(
                gateway_pb2.GetSessionRequest(session_id=out["session_id"]),
                metadata=[("authorization", f"Bearer {key}")],
                timeout=30,
            )
            .session
        )
    assert [(m.role, m.content) for m in session.messages] == [
        ("user", PROMPT),
        ("assistant", out["chat"]["text"]),
    ]


def node_refusal(address: str, key: str, *args: str) -> dict[str, Any]:
    """The error details the Node client prints for the call that failed."""
    result = subprocess.run(
        ["node", "client.js", "--gateway", address, "--max-tokens", "2", *args],
        cwd=NODE_CLIENT,
        env={"PATH": "/usr/bin:/bin", "LLMSERVE_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT_S,
    )
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 2, result.stderr
    first, details = result.stderr.splitlines()
    decoded = json.loads(details)
    assert first == f"llmserve client failed: {decoded['code']}: {decoded['message']}"
    assert decoded["domain"] == "llmserve.dev" and decoded["metadata"] == {"code": decoded["code"]}
    return decoded


def test_node_client_reads_error_details(stack: tuple[DaemonProcess, dict[str, str]]) -> None:
    gateway, keys = stack
    got = node_refusal(gateway.address, "not-a-key-of-this-gateway")
    assert (got["code"], got["reason"]) == ("UNAUTHENTICATED", "API_KEY_UNKNOWN")
    assert "field_violations" not in got and "retry_delay_s" not in got
    got = node_refusal(gateway.address, keys[OWNERS[0]], "--session", "0" * 32)
    assert (got["code"], got["reason"]) == ("NOT_FOUND", "SESSION_NOT_FOUND")
    # Refused by the runtime, passed on by the gateway.
    got = node_refusal(gateway.address, keys[OWNERS[0]], "--max-tokens", "0")
    assert (got["code"], got["reason"]) == ("INVALID_ARGUMENT", "INVALID_FIELD")
    assert [v["field"] for v in got["field_violations"]] == ["sampling.max_tokens"]
    assert "max_tokens must be >= 1" in got["field_violations"][0]["description"]


def test_node_client_reads_retry_info(redis_server: RedisServer, tmp_path: Path) -> None:
    """One request per 100 s for each key: the client's ListModels takes it, and Generate is
    refused before it is routed (so no runtime is needed)."""
    limits = ("--rate-limit-rps", "0.01", "--rate-limit-burst", "1")
    gateway, keys = start_gateway(tmp_path, redis_server, [], *limits)
    try:
        got = node_refusal(gateway.address, keys[OWNERS[1]], "--model", MODEL)
    finally:
        gateway.terminate()
    assert (got["code"], got["reason"]) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    assert 0 < got["retry_delay_s"] <= 100


def test_llmserve_check_passes_and_fails_as_helm_test_needs(
    stack: tuple[DaemonProcess, dict[str, str]], tmp_path: Path
) -> None:
    gateway, keys = stack
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(f"# keys\n{OWNERS[0]}:{keys[OWNERS[0]]}\n")
    out = io.StringIO()
    assert run_checks(CheckConfig(gateway=gateway.address, api_key_file=keys_file), out)
    assert out.getvalue().splitlines() == [
        "ok health: SERVING",
        f"ok ListModels: 1 served ({MODEL}), at least 1 expected",
    ]
    out = io.StringIO()
    assert not run_checks(CheckConfig(gateway=gateway.address, min_models=2, api_key="x" * 20), out)
    assert out.getvalue().splitlines()[-1].startswith("FAIL ListModels: UNAUTHENTICATED")
    out = io.StringIO()
    assert run_checks(CheckConfig(gateway=gateway.address, min_models=0), out)
    assert "skip ListModels: no API key" in out.getvalue()
