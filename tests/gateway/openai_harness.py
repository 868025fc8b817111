"""A gateway serving the OpenAI-compatible HTTP API in front of one real SmolLM2 runtime with
LoRA on and the example adapter loaded, for tests that drive it with the official `openai`
client."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import openai
from prometheus_client.parser import text_string_to_metric_families

from llmserve.processes import REPO_ROOT, DaemonProcess, RedisServer, free_port
from llmserve.v1 import runtime_pb2, runtime_pb2_grpc
from tests.gateway.gateway_harness import CALL_TIMEOUT_S, runtime_status, start_gateway

ADAPTER = "smollm2-answer-format"
ADAPTER_DIR = REPO_ROOT / "examples" / "adapters" / ADAPTER


@dataclass
class HttpGateway:
    """A gateway process with its HTTP port, and the keys of its owners."""

    process: DaemonProcess
    http_port: int
    keys: dict[str, str]
    trace_file: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"

    def client(self, owner: str = "alice", key: str | None = None) -> openai.OpenAI:
        """The official client; no retries of its own (tests see every status)."""
        return openai.OpenAI(
            base_url=self.base_url,
            api_key=key if key is not None else self.keys[owner],
            max_retries=0,
            timeout=CALL_TIMEOUT_S,
        )


def start_http_gateway(
    tmp: Path, redis: RedisServer, runtimes: list[DaemonProcess], *extra: str
) -> HttpGateway:
    port = free_port()
    trace_file = tmp / f"gateway-{port}.spans.jsonl"
    process, keys = start_gateway(
        tmp, redis, runtimes, "--http-port", str(port), "--trace-file", str(trace_file), *extra
    )
    return HttpGateway(process, port, keys, trace_file)


def load_adapter(runtime: DaemonProcess) -> None:
    with grpc.insecure_channel(runtime.address) as channel:
        request = runtime_pb2.LoadAdapterRequest(name=ADAPTER, path=str(ADAPTER_DIR))
        runtime_pb2_grpc.RuntimeStub(channel).LoadAdapter(request, timeout=120)


def metrics_port(runtime: DaemonProcess) -> int:
    return int(runtime.args[runtime.args.index("--metrics-port") + 1])


def finished_requests(runtime: DaemonProcess, reason: str) -> float:
    """The runtime's count of requests that ended with `reason` (Prometheus metrics)."""
    url = f"http://127.0.0.1:{metrics_port(runtime)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0  # summed over the model_name and adapter labels
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "llmserve_requests_total"
                and sample.labels.get("finish_reason") == reason
            ):
                total += sample.value
    return total


def wait_until(check: Any, what: str, within_s: float = 60.0) -> None:
    """Polls `check()` until true; the bound only guards against a hang."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {within_s}s"
        time.sleep(0.05)


def kv_idle(runtime: DaemonProcess) -> bool:
    s = runtime_status(runtime)
    idle = s.num_running == 0 and s.num_waiting == 0
    return idle and s.kv_cache.num_free_blocks == s.kv_cache.num_blocks
