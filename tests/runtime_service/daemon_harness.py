"""Helpers for tests that run the runtime daemon as a real process on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

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
