"""Fixtures of the gateway tests: a real redis-server (Debian package) and two real runtime
daemons serving SmolLM2, started here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


class SharedRuntimes:
    """Two runtimes serving SmolLM2, for every test that does not break one (a test that kills
    or cripples a runtime starts that one itself). Started on first use, and stopped once the
    gateway tests are over: each holds about 2 GB, which the rest of the suite can use."""

    def __init__(self) -> None:
        self.procs: list[DaemonProcess] = []

    def get(self, model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[DaemonProcess]:
        if any(p.proc is None or p.proc.poll() is not None for p in self.procs):
            self.stop()  # a test broke one: start afresh
        if not self.procs:
            self.procs = start_runtimes(model, tmp_path_factory.mktemp("runtimes"), [], [])
        return self.procs

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        with ThreadPoolExecutor(max(len(procs), 1)) as pool:  # drain them together
            list(pool.map(DaemonProcess.terminate, procs))


SHARED_RUNTIMES = SharedRuntimes()


@pytest.fixture(scope="session")
def shared_runtimes() -> Iterator[SharedRuntimes]:
    """SHARED_RUNTIMES, stopped at the end of the session at the latest (after -x, ^C)."""
    try:
        yield SHARED_RUNTIMES
    finally:
        SHARED_RUNTIMES.stop()


@pytest.fixture(scope="module")
def runtimes(
    shared_runtimes: SharedRuntimes, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[DaemonProcess]:
    """The shared runtimes. Tests must leave them idle and alive."""
    return shared_runtimes.get(smollm2_dir, tmp_path_factory)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last gateway test (the next test is elsewhere, or none), stop the shared
    runtimes. This conftest's hooks run for the tests under its directory only."""
    here = Path(__file__).parent
    if nextitem is None or here not in nextitem.path.parents:
        SHARED_RUNTIMES.stop()
