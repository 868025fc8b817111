"""Fixtures of the builder's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from builder_service.build import Builder
from llmserve.device import cpu_info
from llmserve.processes import DaemonProcess
from llmserve.store import open_store
from llmserve.testing.s3_server import s3_server  # noqa: F401 - a fixture


@pytest.fixture
def builder(tmp_path: Path) -> Builder:
    """A CPU builder with its own local store and work directory."""
    return Builder(open_store(str(tmp_path / "store")), tmp_path / "work", device=cpu_info())


def start_builder(store: Path, work: Path, log: Path) -> DaemonProcess:
    args = ["--store", str(store), "--work-dir", str(work), "--grace-period-s", "2"]
    return DaemonProcess("builder_service", args, log_path=log).start()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A builder daemon (a real process) on loopback, one per test module."""
    tmp = tmp_path_factory.mktemp("builder")
    proc = start_builder(tmp / "store", tmp / "work", tmp / "builder.log")
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.terminate()
