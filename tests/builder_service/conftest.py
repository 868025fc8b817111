"""Fixtures of the builder's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder_service.build import Builder
from llmserve.device import cpu_info
from llmserve.store import open_store
from llmserve.testing.s3_server import s3_server  # noqa: F401 - a fixture


@pytest.fixture
def builder(tmp_path: Path) -> Builder:
    """A CPU builder with its own local store and work directory."""
    return Builder(open_store(str(tmp_path / "store")), tmp_path / "work", device=cpu_info())
