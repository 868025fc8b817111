"""Settings of the builder daemon."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.config import setting
from llmserve.server import ServerConfig


@dataclass(kw_only=True)
class BuilderConfig(ServerConfig):
    """The builder's listener and its artifact store."""

    port: int = setting(50053, "gRPC port (0 picks a free one)")
    store: str = setting(
        "~/.cache/llmserve/store", "artifact store: a local directory or s3://bucket/prefix"
    )
