"""Helpers for tests that run the runtime daemon as a real process on loopback."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.processes import DaemonProcess
from llmserve.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc


def start_runtime(model: Path, tmp: Path, *extra: str) -> DaemonProcess:
    args = [
        "--model-path",
        str(model),
        "--log-format",
        "text",
        "--num-kv-blocks",
        "128",
        "--max-num-batched-tokens",
        "256",
        *extra,
    ]
    proc = DaemonProcess("runtime_service", args, log_path=tmp / f"runtime-{time.time_ns()}.log")
    proc.start().wait_serving(timeout=120)
    return proc


def generate_request(
    prompt: str | Sequence[int], max_tokens: int = 16, **sampling: object
) -> runtime_pb2.GenerateRequest:
    p = (
        common_pb2.Prompt(text=prompt)
        if isinstance(prompt, str)
        else common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=list(prompt)))
    )
    params = common_pb2.SamplingParams(
        temperature=0, max_tokens=max_tokens, ignore_eos=True, **sampling
    )
    return runtime_pb2.GenerateRequest(prompt=p, sampling=params)


async def collect(
    stub: runtime_pb2_grpc.RuntimeStub, request: runtime_pb2.GenerateRequest, **kwargs: object
) -> list[runtime_pb2.GenerateResponse]:
    return [chunk async for chunk in stub.Generate(request, **kwargs)]


def tokens(chunks: Sequence[runtime_pb2.GenerateResponse]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def status(address: str) -> runtime_pb2.GetStatusResponse:
    with grpc.insecure_channel(address) as channel:
        return runtime_pb2_grpc.RuntimeStub(channel).GetStatus(
            runtime_pb2.GetStatusRequest(), timeout=10
        )


def wait_all_blocks_free(address: str, timeout: float = 20.0) -> runtime_pb2.GetStatusResponse:
    """GetStatus until nothing runs or waits and every KV block is free."""
    deadline = time.monotonic() + timeout
    while True:
        s = status(address)
        idle = s.num_running == 0 and s.num_waiting == 0
        if idle and s.kv_cache.num_free_blocks == s.kv_cache.num_blocks:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"runtime not idle after {timeout}s: {s}")
        time.sleep(0.05)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def child_process(pid: int, marker: bytes) -> int:
    """The pid of `pid`'s only child whose command line holds `marker`."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
            if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    (only,) = found
    return only


class HealthWatch:
    """Records a daemon's health statuses for llmserve.v1.Runtime, on a thread, until the
    daemon exits (or the deadline, a failure guard, passes)."""

    def __init__(self, address: str, timeout: float = 120.0) -> None:
        self.statuses: list[int] = []
        self.watching = threading.Event()  # set at the first status
        self._address, self._timeout = address, timeout
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        with grpc.insecure_channel(self._address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="llmserve.v1.Runtime"),
                timeout=self._timeout,
            )
            try:
                for reply in stream:
                    self.statuses.append(reply.status)
                    self.watching.set()
            except grpc.RpcError:
                pass  # the daemon exited

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
