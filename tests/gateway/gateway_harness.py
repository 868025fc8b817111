"""Real processes for the gateway's end-to-end tests: redis-server, runtimes, the gateway.

The runtimes are the test-only STAND-IN (tests/gateway/standin_runtime.py) until the runtime
daemon (issue 5) lands. Swapping it for the real one is RUNTIME_MODULE, MODEL and
runtime_args() below; see docs/architecture.md (Gateway) for what else then changes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from llmserve.processes import DaemonProcess, RedisServer
from llmserve.v1 import gateway_pb2, gateway_pb2_grpc

RUNTIME_MODULE = "tests.gateway.standin_runtime"  # later: "runtime_service"
MODEL = "standin-model"  # later: the model name of the SmolLM2 engine
OWNERS = ("alice", "bob", "carol")

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    """Runs an async test body in a fresh event loop."""
    return asyncio.run(body())  # type: ignore[arg-type]


def runtime_args(*extra: str) -> list[str]:
    """Flags of one runtime. Later: ["--store", ..., "--engine", <SmolLM2 engine id>]."""
    return ["--model", MODEL, "--log-format", "text", *extra]


def start_runtimes(
    tmp: Path, count: int, *extra: str, name: str = "runtime"
) -> list[DaemonProcess]:
    procs = [
        DaemonProcess(RUNTIME_MODULE, runtime_args(*extra), log_path=tmp / f"{name}{i}.log").start()
        for i in range(count)
    ]
    for proc in procs:
        proc.wait_serving()
    return procs


def api_keys(redis: RedisServer) -> tuple[Path, dict[str, str]]:
    """The keys file of every gateway using `redis` (one per Redis: each gateway makes Redis
    hold exactly its file's keys) and the key of each owner."""
    path = redis.data_dir / "api-keys"
    if not path.exists():
        path.write_text("".join(f"{o}:{o}-{secrets.token_hex(12)}\n" for o in OWNERS))
    pairs = (line.split(":", 1) for line in path.read_text().splitlines())
    return path, dict(pairs)


def start_gateway(
    tmp: Path, redis: RedisServer, runtimes: Sequence[DaemonProcess], *extra: str
) -> tuple[DaemonProcess, dict[str, str]]:
    """A gateway process routing to `runtimes`, serving (rate limits off unless `extra` says)."""
    keys_file, keys = api_keys(redis)
    args = [
        "--redis", redis.url,
        "--runtime", ",".join(r.address for r in runtimes),
        "--api-keys-file", str(keys_file),
        "--runtime-refresh-s", "0.5",
        "--redis-timeout-s", "1",
        "--redis-retries", "2",
        "--rate-limit-rps", "0",
        "--grace-period-s", "2",
        "--log-format", "text",
        *extra,
    ]  # fmt: skip
    gateway = DaemonProcess("gateway", args, log_path=tmp / f"gateway-{secrets.token_hex(3)}.log")
    gateway.start()
    gateway.wait_serving()
    return gateway, keys


@dataclass
class ChatResult:
    text: str
    chunks: list[Any] = field(default_factory=list)

    @property
    def last(self) -> Any:
        return self.chunks[-1]


class Client:
    """A Gateway client for one API key (None: no key at all)."""

    def __init__(self, address: str, key: str | None) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.metadata = [("authorization", f"Bearer {key}")] if key else []

    def close(self) -> None:
        self.channel.close()

    def create(self, model: str = MODEL, **kw: Any) -> Any:
        request = gateway_pb2.CreateSessionRequest(model=model, **kw)
        return self.stub.CreateSession(request, metadata=self.metadata, timeout=10).session

    def get(self, session_id: str) -> Any:
        request = gateway_pb2.GetSessionRequest(session_id=session_id)
        return self.stub.GetSession(request, metadata=self.metadata, timeout=10).session

    def list(self, page_size: int = 0, page_token: str = "") -> Any:
        request = gateway_pb2.ListSessionsRequest(page_size=page_size, page_token=page_token)
        return self.stub.ListSessions(request, metadata=self.metadata, timeout=10)

    def delete(self, session_id: str) -> None:
        request = gateway_pb2.DeleteSessionRequest(session_id=session_id)
        self.stub.DeleteSession(request, metadata=self.metadata, timeout=10)

    def chat_call(self, session_id: str, message: str, request_id: str = "", **kw: Any) -> Any:
        request = gateway_pb2.ChatRequest(
            session_id=session_id, message=message, request_id=request_id, **kw
        )
        return self.stub.Chat(request, metadata=self.metadata, timeout=30)

    def chat(self, session_id: str, message: str, request_id: str = "", **kw: Any) -> ChatResult:
        result = ChatResult("")
        for chunk in self.chat_call(session_id, message, request_id, **kw):
            result.chunks.append(chunk)
            result.text += chunk.text
        return result

    def messages(self, session_id: str) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.get(session_id).messages]


def reply_to(message: str, turn: int, num_messages: int) -> str:
    """What the stand-in answers to turn `turn` of a prompt of `num_messages` messages.
    Later (SmolLM2): the tests compare history, not the text of replies."""
    return f"turn {turn} of {num_messages} messages: {message}"
