"""Settings of the runtime daemon."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.config import setting
from llmserve.server import ServerConfig


@dataclass(kw_only=True)
class RuntimeConfig(ServerConfig):
    """The runtime's listener."""

    port: int = setting(50052, "gRPC port (0 picks a free one)")
