"""A runtime whose engine process dies (issue 12, item 4): health turns NOT_SERVING at once,
calls get UNAVAILABLE, and the daemon exits with status 1 so that its pod is restarted (it
used to stay SERVING with every Generate failing)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.v1 import runtime_pb2_grpc
from tests.runtime_service.daemon_harness import (
    HealthWatch,
    child_process,
    generate_request,
    start_runtime,
)

EXIT_WITHIN_S = 60.0  # a failure guard: the exit follows the death by a drain (grace 1 s)


def engine_core(pid: int) -> int:
    """The pid of the runtime's engine core: its child started by multiprocessing's spawn
    (the other child is multiprocessing's resource tracker)."""
    return child_process(pid, b"spawn_main")


def test_engine_death_turns_health_not_serving_then_exits_1(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    runtime = start_runtime(tiny_model_dir("qwen2"), tmp_path, "--grace-period-s", "1")
    assert runtime.proc is not None
    health = HealthWatch(runtime.address)
    try:
        assert health.watching.wait(30)
        os.kill(engine_core(runtime.proc.pid), signal.SIGKILL)
        status = runtime.proc.wait(timeout=EXIT_WITHIN_S)
        health.join(10)
        assert status == 1, runtime.log_path.read_text() if runtime.log_path else ""
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.statuses[0] == serving
        assert health_pb2.HealthCheckResponse.NOT_SERVING in health.statuses[1:]
        log = runtime.log_path.read_text() if runtime.log_path else ""
        assert "cannot serve any more: the engine process stopped" in log
    finally:
        runtime.kill()


async def status_after_not_serving(address: str) -> grpc.StatusCode:
    """Waits for health NOT_SERVING, then returns one Generate's status. On grpc.aio with
    outer asyncio guards: a sync stub in a process that had run many other gRPC tests was seen
    to ignore its own deadline once the server had gone, and the test must fail, never hang."""
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=EXIT_WITHIN_S
        )

        async def not_serving() -> None:
            try:
                async for reply in watch:
                    if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        return
            except grpc.aio.AioRpcError as e:  # the daemon has already exited: noticed too
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e

        await asyncio.wait_for(not_serving(), EXIT_WITHIN_S)
        watch.cancel()
    # Whether this call reaches the draining daemon or finds it gone, it is UNAVAILABLE.
    async with grpc.aio.insecure_channel(address) as channel:
        call = runtime_pb2_grpc.RuntimeStub(channel).Generate(generate_request("hi", 2), timeout=30)

        async def read_all() -> None:
            async for _ in call:
                pass

        try:
            await asyncio.wait_for(read_all(), EXIT_WITHIN_S)
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK


def test_generate_after_engine_death_is_unavailable(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """After the death, calls get UNAVAILABLE (never a wait for their deadline)."""
    runtime = start_runtime(tiny_model_dir("qwen2"), tmp_path, "--grace-period-s", "30")
    assert runtime.proc is not None
    try:
        os.kill(engine_core(runtime.proc.pid), signal.SIGKILL)
        status = asyncio.run(status_after_not_serving(runtime.address))
        if status == grpc.StatusCode.CANCELLED:
            # The call landed in the instant the server stopped (after the daemon's linger,
            # its final stop cancels calls not yet dispatched): only a daemon on its way out.
            assert runtime.proc.wait(timeout=EXIT_WITHIN_S) == 1
        else:
            assert status == grpc.StatusCode.UNAVAILABLE
    finally:
        runtime.kill()
