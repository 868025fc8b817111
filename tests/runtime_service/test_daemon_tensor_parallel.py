"""A runtime serving with --tensor-parallel-size 2 (gloo on the CPU): GetStatus reports the
degree, and a worker's death turns health NOT_SERVING and makes the daemon exit 1 (its pod
is restarted) instead of hanging in a collective."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from llmserve.v1 import runtime_pb2_grpc
from tests.runtime_service.daemon_harness import (
    HealthWatch,
    child_process,
    generate_request,
    start_runtime,
    status,
    tokens,
)
from tests.runtime_service.test_daemon_engine_death import EXIT_WITHIN_S, engine_core


def worker_of(core: int) -> int:
    """The pid of the engine core's tensor-parallel worker (rank 1)."""
    return child_process(core, b"runtime_service.parallel.worker")


def test_worker_death_turns_health_not_serving_then_exits_1(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    runtime = start_runtime(
        tiny_model_dir("qwen2"), tmp_path, "--tensor-parallel-size", "2", "--grace-period-s", "1"
    )
    assert runtime.proc is not None
    health = HealthWatch(runtime.address)
    try:
        assert status(runtime.address).tensor_parallel_size == 2
        with grpc.insecure_channel(runtime.address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            assert len(tokens(list(stub.Generate(generate_request([5, 6, 7], 4))))) == 4
        assert health.watching.wait(30)
        os.kill(worker_of(engine_core(runtime.proc.pid)), signal.SIGKILL)
        code = runtime.proc.wait(timeout=EXIT_WITHIN_S)
        health.join(10)
        log = runtime.log_path.read_text() if runtime.log_path else ""
        assert code == 1, log
        assert health.statuses[0] == health_pb2.HealthCheckResponse.SERVING
        assert health_pb2.HealthCheckResponse.NOT_SERVING in health.statuses[1:]
        assert "tensor-parallel worker rank 1 exited with status -9" in log
        assert "cannot serve any more: the engine process stopped" in log
    finally:
        runtime.kill()


def test_a_stopped_runtime_leaves_no_worker_behind(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    runtime = start_runtime(
        tiny_model_dir("llama"), tmp_path, "--tensor-parallel-size", "2", "--grace-period-s", "1"
    )
    try:
        assert runtime.proc is not None
        worker = worker_of(engine_core(runtime.proc.pid))
        assert runtime.terminate() == 0
    finally:
        runtime.kill()
    # The worker was the core's child: once it has exited, its pid is gone or reused by a
    # process that is not a worker.
    cmdline = Path(f"/proc/{worker}/cmdline")
    assert not cmdline.exists() or b"parallel.worker" not in cmdline.read_bytes()
