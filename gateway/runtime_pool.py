"""The runtimes the gateway routes to: one gRPC channel each, checked every refresh.

Every `refresh_s` the pool asks discovery for the addresses (new ones get a channel, gone ones
are closed once their calls end), then checks each runtime with grpc.health.v1 (service
`llmserve.v1.Runtime`) and GetStatus: model, engine, adapters, load and KV usage. A runtime is
healthy when both answer and health reads SERVING. A call that fails to reach a runtime marks
it unhealthy at once, until the next check finds it well again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.discovery import Discovery
from gateway.routing import ModelInfo, RuntimeState, choose_runtime, models_of
from llmserve.server.token import TokenFile
from llmserve.v1 import runtime_pb2, runtime_pb2_grpc

log = logging.getLogger(__name__)

RUNTIME_SERVICE = "llmserve.v1.Runtime"
# Calls still open on a runtime that left discovery may finish within this.
CLOSE_GRACE_S = 30.0


@dataclass(slots=True)
class Runtime:
    """One runtime: its state and its stubs."""

    state: RuntimeState
    channel: grpc.aio.Channel
    stub: runtime_pb2_grpc.RuntimeStub
    health: health_pb2_grpc.HealthStub
    # Runtime.Generate answering bytes, for chunks relayed without parsing (relay.py).
    generate_raw: grpc.aio.UnaryStreamMultiCallable

    @property
    def address(self) -> str:
        return self.state.address


class RuntimePool:
    """See the module docstring. `start()` in a running loop; `stop()` at shutdown."""

    def __init__(
        self,
        discovery: Discovery,
        *,
        refresh_s: float = 2.0,
        timeout_s: float = 2.0,
        max_message_bytes: int = 16 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
        token_file: Path | None = None,
        keepalive_s: float = 10.0,
    ) -> None:
        self.discovery = discovery
        self._credentials = credentials
        self._token = TokenFile(token_file) if token_file is not None else None
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if keepalive_s > 0:  # a frozen or unreachable runtime fails its calls, however idle
            self._options += [
                ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(timeout_s * 1000)),
                ("grpc.http2.ping_timeout_ms", int(timeout_s * 1000)),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        self._runtimes: dict[str, Runtime] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def auth(self) -> tuple[tuple[str, str], ...]:
        """Metadata carrying the runtimes' service token (none without a token file); a
        rotated Secret is used as soon as its file changes."""
        return () if self._token is None else self._token.metadata()

    @property
    def states(self) -> list[RuntimeState]:
        return [r.state for r in self._runtimes.values()]

    def models(self) -> list[ModelInfo]:
        return models_of(self.states)

    def choose(
        self, model: str, *, adapter: str = "", pinned: str = "", exclude: Collection[str] = ()
    ) -> Runtime | None:
        state = choose_runtime(self.states, model, adapter=adapter, pinned=pinned, exclude=exclude)
        return None if state is None else self._runtimes[state.address]

    def mark_failed(self, address: str, reason: str) -> None:
        """A call could not reach the runtime: route around it until a check passes."""
        runtime = self._runtimes.get(address)
        if runtime is not None and runtime.state.healthy:
            log.warning("runtime %s unhealthy: %s", address, reason)
            runtime.state.healthy = False
            runtime.state.last_error = reason

    async def refresh(self) -> None:
        """Follows discovery, then checks every runtime (concurrently)."""
        addresses = set(await self.discovery.addresses())
        for address in addresses - self._runtimes.keys():
            channel = (
                grpc.aio.insecure_channel(address, options=self._options)
                if self._credentials is None
                else grpc.aio.secure_channel(address, self._credentials, options=self._options)
            )
            self._runtimes[address] = Runtime(
                RuntimeState(address),
                channel,
                runtime_pb2_grpc.RuntimeStub(channel),
                health_pb2_grpc.HealthStub(channel),
                channel.unary_stream(
                    "/llmserve.v1.Runtime/Generate",
                    request_serializer=runtime_pb2.GenerateRequest.SerializeToString,
                    response_deserializer=None,
                ),
            )
            log.info("runtime %s added", address)
        for address in self._runtimes.keys() - addresses:
            gone = self._runtimes.pop(address)
            task = asyncio.create_task(gone.channel.close(grace=CLOSE_GRACE_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            log.info("runtime %s removed", address)
        await asyncio.gather(*(self._check(r) for r in list(self._runtimes.values())))

    async def _check(self, runtime: Runtime) -> None:
        state = runtime.state
        was_healthy = state.healthy
        try:
            health = await runtime.health.Check(
                health_pb2.HealthCheckRequest(service=RUNTIME_SERVICE), timeout=self.timeout_s
            )
            status = await runtime.stub.GetStatus(
                runtime_pb2.GetStatusRequest(), timeout=self.timeout_s, metadata=self.auth()
            )
        except grpc.aio.AioRpcError as e:
            state.healthy = False
            state.last_error = f"{e.code().name}: {e.details()}"
        else:
            serving = health.status == health_pb2.HealthCheckResponse.SERVING
            state.healthy = serving
            state.last_error = "" if serving else "health check: not SERVING"
            state.draining = status.draining
            state.model = status.engine.model_name
            state.engine_id = status.engine.engine_id
            state.max_model_len = status.engine.max_model_len
            state.adapters = tuple(sorted(a.name for a in status.adapters))
            state.num_running = status.num_running
            state.num_waiting = status.num_waiting
            kv = status.kv_cache
            used = kv.num_blocks - kv.num_free_blocks
            state.kv_usage = used / kv.num_blocks if kv.num_blocks > 0 else 0.0
            state.num_sent_since_status = 0
        if state.healthy != was_healthy:
            if state.healthy:
                log.info("runtime %s healthy: model %s", state.address, state.model)
            else:
                log.warning("runtime %s unhealthy: %s", state.address, state.last_error)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception as e:  # keep routing on the last known state
                log.error("runtime refresh failed: %s", e, exc_info=e)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.gather(*(r.channel.close() for r in self._runtimes.values()))
        self._runtimes.clear()
        for task in list(self._closing):
            task.cancel()
