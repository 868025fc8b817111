"""Settings of the gateway daemon."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.config import setting
from llmserve.server import ServerConfig


@dataclass(kw_only=True)
class GatewayConfig(ServerConfig):
    """The gateway's listener."""

    port: int = setting(50051, "gRPC port (0 picks a free one)")
