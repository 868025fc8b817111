"""Fixtures of the gateway tests: a real redis-server (Debian package) and two real runtime
daemons serving SmolLM2, started here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.redis_store import RedisStore
from llmserve.processes import DaemonProcess, RedisServer
from tests.gateway.gateway_harness import start_runtimes


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server (AOF on) shared by the tests that need no restart."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_store(redis_server: RedisServer) -> Callable[[], RedisStore]:
    """A factory of RedisStore clients of `redis_server`; make one inside the test's loop."""
    return lambda: RedisStore(redis_server.url, timeout_s=1.0, retries=1)


@pytest.fixture(scope="session")
def runtimes(
    smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[DaemonProcess]]:
    """Two runtimes serving SmolLM2, shared by every test that does not break them (a test
    that kills or restarts a runtime starts its own). Tests must leave them idle."""
    procs = start_runtimes(smollm2_dir, tmp_path_factory.mktemp("runtimes"), [], [])
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
