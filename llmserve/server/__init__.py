"""gRPC server helpers shared by the daemons."""

from llmserve.server.config import ServerConfig
from llmserve.server.daemon import Daemon, Service, run_daemon

__all__ = ["Daemon", "ServerConfig", "Service", "run_daemon"]
