"""SIGTERM during streams: they finish within the grace period, new requests get UNAVAILABLE,
health reads NOT_SERVING, and the process exits 0. Start-up failures exit non-zero."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.processes import REPO_ROOT
from llmserve.v1 import runtime_pb2_grpc
from tests.runtime_service.daemon_harness import collect, generate_request, start_runtime, tokens

# A failure guard, not a measurement: the streams finish long before it on any machine, and
# the daemon exits as soon as they have (a drain waits for in-flight calls, not the clock).
GRACE_S = 600
STREAM_TOKENS = 300  # SmolLM2 on a CPU: the streams outlast the checks made while draining


def test_sigterm_lets_streams_finish(smollm2_dir: Path, tmp_path: Path) -> None:
    proc = start_runtime(
        smollm2_dir, tmp_path, "--grace-period-s", str(GRACE_S), "--num-kv-blocks", "1024"
    )
    assert proc.proc is not None

    async def main() -> None:
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            calls = [
                stub.Generate(generate_request(f"stream {i}", STREAM_TOKENS)) for i in range(6)
            ]
            firsts = [await call.read() for call in calls]  # all six are streaming
            started = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            watch = health.Watch(
                health_pb2.HealthCheckRequest(service="llmserve.v1.Runtime"), timeout=GRACE_S
            )
            async for reply in watch:  # SERVING until the signal is handled, then NOT_SERVING
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
            watch.cancel()
            try:
                await collect(stub, generate_request("too late", 3))
                raise AssertionError("a new request was accepted while draining")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            for call, first in zip(calls, firsts, strict=True):
                chunks = [first]
                while (chunk := await call.read()) is not grpc.aio.EOF:
                    chunks.append(chunk)
                assert len(tokens(chunks)) == STREAM_TOKENS
            assert time.monotonic() - started < GRACE_S

    try:
        asyncio.run(main())
        assert proc.proc.wait(timeout=GRACE_S + 10) == 0
    finally:
        proc.terminate()


def run_runtime(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime_service", "--port", "0", "--log-format", "text", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_startup_failures_exit_nonzero_with_the_reason(tmp_path: Path) -> None:
    out = run_runtime(["--model-path", str(tmp_path / "missing")])
    assert out.returncode == 1
    assert f"model directory {tmp_path / 'missing'} does not exist" in out.stderr
    (tmp_path / "empty").mkdir()
    out = run_runtime(["--model-path", str(tmp_path / "empty")])
    assert out.returncode == 1 and "has no config.json" in out.stderr
    out = run_runtime([])
    assert out.returncode == 2 and "give exactly one of --engine" in out.stderr
