"""Real processes for the gateway's end-to-end tests: redis-server, runtime daemons serving
SmolLM2-135M-Instruct, the gateway.

The runtimes are `python -m runtime_service`, started from SmolLM2 as a Hugging Face directory
(the session fixture `smollm2_dir`); their flags are in runtime_args() only, so serving a built
engine instead (`--store`/`--engine`) changes that one function. Replies are greedy and short:
everything runs on the 2 CPU cores of CI.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from llmserve.processes import DaemonProcess, RedisServer
from llmserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, runtime_pb2, runtime_pb2_grpc

RUNTIME_MODULE = "runtime_service"
MODEL = "smollm2"  # the name the runtimes serve SmolLM2 under (--served-model-name)
MAX_MODEL_LEN = 2048
# One compute thread per runtime (--cpu-threads 1): two runtimes, a gateway and the test share
# 2 cores, and torch's default (a thread per core in every process) oversubscribes them,
# about 10x slower.
RUNTIME_START_TIMEOUT_S = 300.0
GATEWAY_REFRESH_S = 0.5  # how often a test gateway re-reads its runtimes' health and status
MAX_TOKENS = 8  # of a reply, unless a test asks for more
CALL_TIMEOUT_S = 120.0  # of one Chat: replies queue behind each other on 2 cores
OWNERS = ("alice", "bob", "carol")

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    """Runs an async test body in a fresh event loop."""
    return asyncio.run(body())  # type: ignore[arg-type]


def runtime_args(model: Path, *extra: str) -> list[str]:
    """Flags of one runtime serving SmolLM2 from `model`, its Hugging Face directory.
    Later: ["--store", ..., "--engine", <SmolLM2 engine id>, ...]."""
    return [
        "--model-path", str(model),
        "--served-model-name", MODEL,
        "--max-model-len", str(MAX_MODEL_LEN),
        "--num-kv-blocks", "256",
        "--cpu-threads", "1",
        "--log-format", "text",
        *extra,
    ]  # fmt: skip


def spans_path(runtime: DaemonProcess) -> Path:
    """The file a runtime started by start_runtimes writes its trace spans to."""
    assert runtime.log_path is not None
    return runtime.log_path.with_suffix(".spans.jsonl")


def start_runtimes(
    model: Path, tmp: Path, *flags: Sequence[str], name: str = "runtime"
) -> list[DaemonProcess]:
    """One runtime per list of extra flags, started together; returns once all serve."""
    procs = []
    for i, extra in enumerate(flags):
        log = tmp / f"{name}{i}-{secrets.token_hex(3)}.log"
        args = runtime_args(model, "--trace-file", str(log.with_suffix(".spans.jsonl")), *extra)
        procs.append(DaemonProcess(RUNTIME_MODULE, args, log_path=log).start())
    try:
        for proc in procs:
            proc.wait_serving(timeout=RUNTIME_START_TIMEOUT_S)
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    return procs


def runtime_status(runtime: DaemonProcess) -> runtime_pb2.GetStatusResponse:
    with grpc.insecure_channel(runtime.address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        return stub.GetStatus(runtime_pb2.GetStatusRequest(), timeout=10)


def wait_idle(runtimes: Sequence[DaemonProcess], within_s: float = 10.0) -> float:
    """Waits until no request runs or waits on any of `runtimes`; returns the seconds taken."""
    started = time.monotonic()
    while True:
        statuses = [runtime_status(r) for r in runtimes]
        if all(s.num_running == 0 and s.num_waiting == 0 for s in statuses):
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, f"runtimes still busy: {statuses}"
        time.sleep(0.02)


@contextmanager
def busy(runtime: DaemonProcess) -> Iterator[None]:
    """Keeps one long greedy request running on `runtime` (sent to it directly), until the
    block ends: gateways then see it loaded, and route new sessions to a less loaded runtime."""
    channel = grpc.insecure_channel(runtime.address)
    request = runtime_pb2.GenerateRequest(
        prompt=common_pb2.Prompt(text="Count from one to a thousand."),
        sampling=greedy(MAX_MODEL_LEN // 2, ignore_eos=True),
    )
    call = runtime_pb2_grpc.RuntimeStub(channel).Generate(request)
    try:
        next(call)  # it runs
        time.sleep(4 * GATEWAY_REFRESH_S)  # every gateway has read the runtime's status since
        yield
    finally:
        call.cancel()
        channel.close()
    wait_idle([runtime])


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
        "--runtime-refresh-s", str(GATEWAY_REFRESH_S),
        "--redis-timeout-s", "1",
        "--redis-retries", "2",
        "--rate-limit-rps", "0",
        "--auth-failure-rps", "0",  # tests share 127.0.0.1 and a Redis: no failed-auth bucket
        "--grace-period-s", "2",
        "--log-format", "text",
        *extra,
    ]  # fmt: skip
    gateway = DaemonProcess("gateway", args, log_path=tmp / f"gateway-{secrets.token_hex(3)}.log")
    gateway.start()
    gateway.wait_serving()
    if runtimes:
        wait_models(gateway, keys[OWNERS[0]], len(runtimes))
    return gateway, keys


def wait_models(gateway: DaemonProcess, key: str, num_runtimes: int, within_s: float = 10) -> None:
    """Waits until the gateway has found `num_runtimes` healthy runtimes of MODEL."""
    client = Client(gateway.address, key)
    deadline = time.monotonic() + within_s
    try:
        while True:
            models = client.stub.ListModels(
                gateway_pb2.ListModelsRequest(), metadata=client.metadata, timeout=10
            ).models
            if any(m.name == MODEL and m.num_healthy_runtimes >= num_runtimes for m in models):
                return
            assert time.monotonic() < deadline, f"gateway sees {models}"
            time.sleep(0.1)
    finally:
        client.close()


def greedy(max_tokens: int = MAX_TOKENS, **kw: Any) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(temperature=0, max_tokens=max_tokens, **kw)


@dataclass
class ChatResult:
    text: str
    chunks: list[Any] = field(default_factory=list)

    @property
    def last(self) -> Any:
        return self.chunks[-1]


class Client:
    """A Gateway client for one API key (None: no key at all). Chats are greedy and short
    (MAX_TOKENS) unless `sampling` says otherwise."""

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

    def chat_call(
        self,
        session_id: str,
        message: str,
        request_id: str = "",
        sampling: common_pb2.SamplingParams | None = None,
    ) -> Any:
        request = gateway_pb2.ChatRequest(
            session_id=session_id,
            message=message,
            request_id=request_id,
            sampling=sampling if sampling is not None else greedy(),
        )
        return self.stub.Chat(request, metadata=self.metadata, timeout=CALL_TIMEOUT_S)

    def chat(
        self,
        session_id: str,
        message: str,
        request_id: str = "",
        sampling: common_pb2.SamplingParams | None = None,
    ) -> ChatResult:
        result = ChatResult("")
        for chunk in self.chat_call(session_id, message, request_id, sampling):
            result.chunks.append(chunk)
            result.text += chunk.text
        return result

    def messages(self, session_id: str) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.get(session_id).messages]
