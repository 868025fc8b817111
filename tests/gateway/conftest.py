"""Fixtures of the gateway tests: a real redis-server (Debian package), started here."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from gateway.redis_store import RedisStore
from llmserve.processes import RedisServer


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
