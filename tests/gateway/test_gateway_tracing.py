"""The gateway continues the caller's trace and passes it on to the runtime."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from llmserve.processes import DaemonProcess, RedisServer
from tests.gateway.gateway_harness import Client, spans_path, start_gateway


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_trace_from_client_through_gateway_to_runtime(
    tmp_path: Path, redis_server: RedisServer, runtimes: list[DaemonProcess]
) -> None:
    gateway_trace = tmp_path / "gateway.jsonl"
    gateway, keys = start_gateway(
        tmp_path, redis_server, runtimes, "--trace-file", str(gateway_trace)
    )
    try:
        alice = Client(gateway.address, keys["alice"])
        sid = alice.create().session_id
        trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
        alice.metadata.append(("traceparent", f"00-{trace_id}-{parent}-01"))
        alice.chat(sid, "trace me")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ours = [
                s
                for r in runtimes
                for s in spans(spans_path(r))
                if s["context"]["trace_id"] == f"0x{trace_id}"
                and s["name"] == "llmserve.v1.Runtime/Generate"
            ]
            if ours:
                break
            time.sleep(0.1)
        (runtime_span,) = ours
        # The runtime's own spans of the request hang under its server span.
        steps = {
            s["name"]
            for r in runtimes
            for s in spans(spans_path(r))
            if s["parent_id"] == runtime_span["context"]["span_id"]
        }
        assert steps == {f"llmserve.runtime.{step}" for step in ("queue", "prefill", "decode")}
        by_id = {
            s["context"]["span_id"]: s
            for s in spans(gateway_trace)
            if s["context"]["trace_id"] == f"0x{trace_id}"
        }
        client_span = by_id[runtime_span["parent_id"]]
        assert client_span["kind"] == "SpanKind.CLIENT"
        server_span = by_id[client_span["parent_id"]]
        assert server_span["name"] == "llmserve.v1.Gateway/Chat"
        assert server_span["parent_id"] == f"0x{parent}"
    finally:
        gateway.terminate()
