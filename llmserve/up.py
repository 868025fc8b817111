"""`llmserve up`: the local stack that `make run` starts, on embedded defaults.

Starts a local redis-server, the builder, a runtime and the gateway as child processes on
loopback, waits until each reports SERVING, then opens `llmserve chat` when the gateway serves
a model (else waits for Ctrl-C), and stops them all (SIGTERM, so each drains). Logs go to
<workdir>/logs; the local API key is in <workdir>/api-keys.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from llmserve.config import parse_config, setting
from llmserve.processes import REPO_ROOT, DaemonProcess, RedisServer
from llmserve.testing import smollm2
from llmserve.v1 import gateway_pb2, gateway_pb2_grpc

# What the stack cannot do yet, and which issue brings it.
MISSING = ("building the SmolLM2 engine (Builder.Build) - builder issue; served in place",)
MODEL_NAME = "SmolLM2-135M-Instruct"
LOCAL_OWNER = "local"


@dataclass(kw_only=True)
class UpConfig:
    """Where the local stack keeps its files and which ports it uses."""

    workdir: Path = setting(REPO_ROOT / ".cache" / "run", "logs, Redis data and the store")
    gateway_port: int = setting(50051, "gateway gRPC port")
    runtime_port: int = setting(50052, "runtime gRPC port")
    builder_port: int = setting(50053, "builder gRPC port")
    max_reply_tokens: int = setting(400, "most tokens of a chat reply")


def local_api_key(workdir: Path) -> tuple[Path, str]:
    """The stack's keys file, with one key made on first use and kept."""
    path = workdir / "api-keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{LOCAL_OWNER}:{secrets.token_urlsafe(24)}\n")
        path.chmod(0o600)
    return path, path.read_text().split(":", 1)[1].strip()


def served_models(address: str, api_key: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        reply = gateway_pb2_grpc.GatewayStub(channel).ListModels(
            gateway_pb2.ListModelsRequest(),
            metadata=[("authorization", f"Bearer {api_key}")],
            timeout=10,
        )
    return [m.name for m in reply.models if m.num_healthy_runtimes > 0]


def _exit_on_sigterm(*_: object) -> None:
    raise SystemExit(143)  # runs the cleanup below, as Ctrl-C does


def main(argv: Sequence[str] | None = None, prog: str = "llmserve up") -> int:
    config = parse_config(UpConfig, argv, prog=prog, description=__doc__.splitlines()[0])
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
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
        DaemonProcess(
            "runtime_service",
            [
                "--model",
                str(smollm2.hf_dir(REPO_ROOT / ".cache" / "models")),
                "--served-model-name",
                MODEL_NAME,
            ],
            port=config.runtime_port,
            log_path=logs / "runtime.log",
        ),
    ]
    keys_file, api_key = local_api_key(config.workdir)
    gateway_args = ["--redis", redis.url, "--runtime", daemons[1].address]
    gateway_args += ["--api-keys-file", str(keys_file)]
    daemons.append(
        DaemonProcess(
            "gateway", gateway_args, port=config.gateway_port, log_path=logs / "gateway.log"
        )
    )
    try:
        for daemon in daemons:
            daemon.start().wait_serving()
            print(f"{daemon.module:<14} {daemon.address}  (log: {daemon.log_path})")
        print(f"API key        {keys_file} (owner {LOCAL_OWNER!r})")
        print("Not available yet:" if MISSING else "", *(f"\n  - {m}" for m in MISSING))
        if served_models(daemons[-1].address, api_key):
            chat = [
                sys.executable,
                "-m",
                "llmserve",
                "chat",
                "--gateway",
                daemons[-1].address,
                "--temperature",
                "0",
                "--max-tokens",
                str(config.max_reply_tokens),
            ]
            env = {**os.environ, "LLMSERVE_API_KEY": api_key}
            with contextlib.suppress(KeyboardInterrupt):
                return subprocess.run(chat, env=env, check=False).returncode
            return 0
        print("\nNo model served yet, so no chat. The daemons answer health checks and")
        print("reflection. Press Ctrl-C to stop.")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
        return 0
    except (RuntimeError, TimeoutError, grpc.RpcError) as e:
        print(f"llmserve up: {e}", file=sys.stderr)
        return 1
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        redis.stop()
