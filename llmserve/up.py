"""`llmserve up`: the local stack that `make run` starts, on embedded defaults.

Starts a local redis-server, the builder, a runtime and the gateway as child processes on
loopback, waits until each reports SERVING, then waits for Ctrl-C and stops them all
(SIGTERM, so each drains). Logs go to <workdir>/logs.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmserve.config import parse_config, setting
from llmserve.processes import REPO_ROOT, DaemonProcess, RedisServer

# What the stack cannot do yet, and which issue brings it.
MISSING = (
    "building the SmolLM2 engine (Builder.Build) - builder issue",
    "serving the engine (Runtime.Generate) - runtime engine and runtime daemon issues",
    "chat sessions and `llmserve chat` (Gateway.Chat) - gateway issue",
)


@dataclass(kw_only=True)
class UpConfig:
    """Where the local stack keeps its files and which ports it uses."""

    workdir: Path = setting(REPO_ROOT / ".cache" / "run", "logs, Redis data and the store")
    gateway_port: int = setting(50051, "gateway gRPC port")
    runtime_port: int = setting(50052, "runtime gRPC port")
    builder_port: int = setting(50053, "builder gRPC port")


def main(argv: Sequence[str] | None = None, prog: str = "llmserve up") -> int:
    config = parse_config(UpConfig, argv, prog=prog, description=__doc__.splitlines()[0])
    logs = config.workdir / "logs"
    redis = RedisServer(config.workdir / "redis").start()
    print(f"redis-server   {redis.url}")
    daemons = [
        DaemonProcess(
            "builder_service",
            ["--store", str(config.workdir / "store")],
            port=config.builder_port,
            log_path=logs / "builder.log",
        ),
        DaemonProcess("runtime_service", port=config.runtime_port, log_path=logs / "runtime.log"),
        DaemonProcess("gateway", port=config.gateway_port, log_path=logs / "gateway.log"),
    ]
    try:
        for daemon in daemons:
            daemon.start().wait_serving()
            print(f"{daemon.module:<14} {daemon.address}  (log: {daemon.log_path})")
        print("\nNot available yet:")
        for item in MISSING:
            print(f"  - {item}")
        print("\nThe daemons answer health checks and reflection. Press Ctrl-C to stop.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"llmserve up: {e}", file=sys.stderr)
        return 1
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        redis.stop()
