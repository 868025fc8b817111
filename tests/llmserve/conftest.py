"""Fixtures of the shared package's tests."""

from llmserve.testing.s3_server import s3_server  # noqa: F401 - a fixture
