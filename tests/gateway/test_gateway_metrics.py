"""The gateway's own metrics and access log, moved by real calls through a gateway process
(real Redis, real SmolLM2 runtimes): calls by method and code, auth failures by reason, rate
limit refusals, sessions; one JSON access-log line per call with the caller's ids."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llmserve.processes import DaemonProcess, RedisServer, free_port
from llmserve.testing.metrics import has, scrape, value
from tests.gateway.gateway_harness import Client, start_gateway

BURST = 8  # bob's calls allowed before his key's bucket is empty (it refills ~never)


def metrics_port(gateway: DaemonProcess) -> int:
    return int(gateway.args[gateway.args.index("--metrics-port") + 1])


def access_lines(gateway: DaemonProcess) -> list[dict]:
    assert gateway.log_path is not None
    entries = [json.loads(x) for x in gateway.log_path.read_text().splitlines() if x[:1] == "{"]
    return [e for e in entries if e["logger"] == "llmserve.access"]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test alone: its rate-limit buckets start full, and stay here."""
    redis = RedisServer(tmp_path / "redis").start()
    yield redis
    redis.stop()


def test_gateway_metrics_and_access_log(
    tmp_path: Path, own_redis: RedisServer, runtimes: list[DaemonProcess]
) -> None:
    gateway, keys = start_gateway(
        tmp_path,
        own_redis,
        runtimes,
        *("--metrics-port", str(free_port()), "--log-format", "json"),
        *("--rate-limit-rps", "0.001", "--rate-limit-burst", str(BURST)),
    )
    port = metrics_port(gateway)
    try:
        before = scrape(port)
        alice = Client(gateway.address, keys["alice"])
        sid = alice.create().session_id
        trace_id = secrets.token_hex(16)
        alice.metadata.append(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"))
        reply = alice.chat(sid, "Say hi.", request_id="turn-1")
        alice.metadata.pop()
        alice.get(sid)
        for key in (None, "not-a-key"):
            with pytest.raises(grpc.RpcError) as err:
                Client(gateway.address, key).list()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        malformed = Client(gateway.address, None)
        malformed.metadata = [("authorization", "Basic abc")]
        with pytest.raises(grpc.RpcError):
            malformed.list()
        bob = Client(gateway.address, keys["bob"])
        for _ in range(BURST):
            bob.list()
        with pytest.raises(grpc.RpcError) as err:
            bob.list()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        after = scrape(port)
    finally:
        gateway.terminate()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    rpc = "llmserve_rpc_requests_total"
    assert moved(rpc, method="llmserve.v1.Gateway/CreateSession", code="OK") == 1
    assert moved(rpc, method="llmserve.v1.Gateway/Chat", code="OK") == 1
    assert moved(rpc, method="llmserve.v1.Gateway/ListSessions", code="OK") == BURST
    assert moved(rpc, method="llmserve.v1.Gateway/ListSessions", code="UNAUTHENTICATED") == 3
    assert moved(rpc, method="llmserve.v1.Gateway/ListSessions", code="RESOURCE_EXHAUSTED") == 1
    chat_seconds = "llmserve_rpc_duration_seconds_count"
    assert moved(chat_seconds, method="llmserve.v1.Gateway/Chat", code="OK") == 1
    for reason in ("missing", "malformed", "unknown"):
        assert moved("llmserve_gateway_auth_failures_total", reason=reason) == 1, reason
    assert moved("llmserve_gateway_rate_limited_total", limit="api_key") == 1
    assert moved("llmserve_gateway_sessions_total", event="created") == 1
    assert moved("llmserve_gateway_sessions_total", event="turn_committed") == 1
    assert value(after, "llmserve_gateway_active_streams", method="Chat") == 0
    assert has(after, "llmserve_gateway_active_streams", method="Chat")

    lines = access_lines(gateway)
    (chat,) = [e for e in lines if e["method"] == "llmserve.v1.Gateway/Chat"]
    assert chat["level"] == "info" and chat["code"] == "OK"
    assert chat["owner"] == "alice" and chat["session_id"] == sid
    assert chat["request_id"] == "turn-1" and chat["trace_id"] == trace_id
    assert chat["tokens_out"] == reply.last.usage.completion_tokens > 0
    assert chat["tokens_in"] == reply.last.usage.prompt_tokens > 0
    assert chat["duration_ms"] > 0
    refused = [e for e in lines if e["code"] == "UNAUTHENTICATED"]
    assert len(refused) == 3 and all("owner" not in e for e in refused)
    (limited,) = [e for e in lines if e["code"] == "RESOURCE_EXHAUSTED"]
    assert limited["owner"] == "bob"
