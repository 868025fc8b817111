"""`llmserve chat`: an interactive streaming chat with the gateway.

Creates a session (or resumes one with --session), then reads one message per line from
standard input and prints the reply as it streams. Lines starting with "/" are commands:
/history, /session, /help, /quit. Each turn carries a fresh request id, so a turn the gateway
reports as failed can be sent again without being stored twice. Works the same on a terminal
and on a pipe (a pipe gets no prompts), which is how the tests drive it.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc

from llmserve.config import parse_config, require, setting
from llmserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

HELP = "commands: /history (the conversation), /session (its id), /help, /quit"


@dataclass(kw_only=True)
class ChatConfig:
    """Where the gateway is, who is calling, and which session to talk in."""

    gateway: str = setting("127.0.0.1:50051", "gateway address HOST:PORT")
    api_key: str = setting("", "API key (prefer the environment variable LLMSERVE_API_KEY)")
    session: str = setting("", "resume this session id instead of creating a session")
    model: str = setting("", "model of a new session (default: the only model served)")
    adapter: str = setting("", "LoRA adapter of a new session (default: the base model)")
    system_prompt: str = setting("", "system prompt of a new session")
    temperature: float | None = setting(None, "sampling temperature (0: greedy)")
    max_tokens: int | None = setting(None, "most tokens per reply")
    timeout_s: float = setting(300.0, "deadline of one call")
    gateway_tls_ca: Path | None = setting(
        None, "PEM CA of the gateway's certificate: connect with TLS"
    )
    gateway_tls_cert: Path | None = setting(
        None, "PEM client certificate for the gateway (mTLS; with gateway_tls_key)"
    )
    gateway_tls_key: Path | None = setting(None, "PEM private key of gateway_tls_cert")

    def __post_init__(self) -> None:
        require(bool(self.api_key), "api_key is required (--api-key or LLMSERVE_API_KEY)")
        require(self.timeout_s > 0, f"timeout_s must be > 0, got {self.timeout_s}")
        require(
            (self.gateway_tls_cert is None) == (self.gateway_tls_key is None),
            "gateway_tls_cert and gateway_tls_key must be given together",
        )


def open_channel(config: ChatConfig) -> grpc.Channel:
    if config.gateway_tls_ca is None and config.gateway_tls_cert is None:
        return grpc.insecure_channel(config.gateway)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=config.gateway_tls_ca.read_bytes() if config.gateway_tls_ca else None,
        private_key=config.gateway_tls_key.read_bytes() if config.gateway_tls_key else None,
        certificate_chain=config.gateway_tls_cert.read_bytes() if config.gateway_tls_cert else None,
    )
    return grpc.secure_channel(config.gateway, credentials)


class ChatClient:
    """One session on one gateway; writes replies to `out` as they stream."""

    def __init__(self, config: ChatConfig, channel: grpc.Channel, out: TextIO) -> None:
        self.config = config
        self.stub = gateway_pb2_grpc.GatewayStub(channel)
        self.metadata = [("authorization", f"Bearer {config.api_key}")]
        self.out = out
        self.session_id = ""
        sampling = common_pb2.SamplingParams()
        if config.temperature is not None:
            sampling.temperature = config.temperature
        if config.max_tokens is not None:
            sampling.max_tokens = config.max_tokens
        self.sampling = sampling

    def _call(self, method: Any, request: Any) -> Any:
        return method(request, metadata=self.metadata, timeout=self.config.timeout_s)

    def open_session(self) -> str:
        c = self.config
        if c.session:
            request = gateway_pb2.GetSessionRequest(session_id=c.session)
            session = self._call(self.stub.GetSession, request).session
            verb = f"resumed ({len(session.messages)} messages)"
        else:
            model = c.model or self._only_model()
            request = gateway_pb2.CreateSessionRequest(
                model=model, adapter=c.adapter, system_prompt=c.system_prompt
            )
            session = self._call(self.stub.CreateSession, request).session
            verb = "created"
        self.session_id = session.session_id
        adapter = f", adapter {session.adapter}" if session.adapter else ""
        print(f"session {session.session_id} {verb}: model {session.model}{adapter}", file=self.out)
        return self.session_id

    def _only_model(self) -> str:
        models = self._call(self.stub.ListModels, gateway_pb2.ListModelsRequest()).models
        names = [m.name for m in models]
        if len(names) != 1:
            raise SystemExit(
                f"llmserve chat: choose a model with --model; served: {', '.join(names) or 'none'}"
            )
        return names[0]

    def send(self, message: str) -> None:
        request = gateway_pb2.ChatRequest(
            session_id=self.session_id,
            message=message,
            sampling=self.sampling,
            request_id=uuid.uuid4().hex,
        )
        for chunk in self._call(self.stub.Chat, request):
            self.out.write(chunk.text)
            self.out.flush()
        self.out.write("\n")

    def history(self) -> None:
        request = gateway_pb2.GetSessionRequest(session_id=self.session_id)
        session = self._call(self.stub.GetSession, request).session
        if session.system_prompt:
            print(f"[system] {session.system_prompt}", file=self.out)
        for m in session.messages:
            print(f"[{m.role}] {m.content}", file=self.out)


def run(client: ChatClient, lines: TextIO, out: TextIO, err: TextIO, interactive: bool) -> int:
    """The read-send-print loop; returns the exit status."""
    try:
        client.open_session()
    except grpc.RpcError as e:
        print(f"llmserve chat: {e.code().name}: {e.details()}", file=err)
        return 1
    if interactive:
        print(HELP, file=out)
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = lines.readline()
        if not line:
            return 0
        text = line.rstrip("\n")
        command = text.strip()
        if not command:
            continue
        try:
            if command in ("/quit", "/exit"):
                return 0
            if command == "/help":
                print(HELP, file=out)
            elif command == "/session":
                print(client.session_id, file=out)
            elif command == "/history":
                client.history()
            else:
                client.send(text)
        except grpc.RpcError as e:
            out.flush()
            print(f"\n[error] {e.code().name}: {e.details()}", file=err)


def main(argv: Sequence[str] | None = None, prog: str = "llmserve chat") -> int:
    config = parse_config(ChatConfig, argv, prog=prog, description=__doc__.splitlines()[0])
    with open_channel(config) as channel:
        client = ChatClient(config, channel, sys.stdout)
        return run(client, sys.stdin, sys.stdout, sys.stderr, sys.stdin.isatty())
