"""A gRPC daemon: services, health, reflection, TLS, start-up warm-up and drain on SIGTERM.

Life of a daemon:
1. `setup(daemon)` registers services and hooks (fast; no heavy work).
2. The server listens; health answers NOT_SERVING.
3. Warm-up hooks run (load an engine, connect to Redis, ...). A failure stops the process with
   a clear message and exit status 1.
4. Health answers SERVING.
5. On SIGTERM or SIGINT: health goes NOT_SERVING, new calls get UNAVAILABLE, calls in flight
   may finish for up to `grace_period_s`, stop hooks run, and the process exits with status 0.
6. When a part the daemon cannot serve without dies (`fail`, e.g. the runtime's engine
   process): the same drain, and exit status 1, so that the pod is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from llmserve.logs import dump_stacks_on_sigusr1, setup_logging
from llmserve.server.config import ServerConfig
from llmserve.server.interceptor import ServerInterceptor
from llmserve.server.reflection import enable_reflection
from llmserve.server.token import ServiceToken
from llmserve.telemetry import setup_tracing, shutdown_tracing, start_metrics_server

log = logging.getLogger(__name__)
REFUSAL_GRACE_S = 1.0  # how long a stopping server lets refusals in flight end
FAIL_LINGER_S = 1.0  # after a fatal fault: NOT_SERVING, refusing calls, before the drain

Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Service:
    """A servicer and how to add it to a server."""

    name: str  # full name, e.g. "llmserve.v1.Runtime"
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]


class Daemon:
    """One gRPC server with the behaviour described in the module docstring."""

    def __init__(self, name: str, config: ServerConfig) -> None:
        self.name = name
        self.config = config
        token = ServiceToken(config.service_token_file) if config.service_token_file else None
        self.interceptor = ServerInterceptor(token)
        self.health = health.aio.HealthServicer()
        self.port = 0
        self._services: list[Service] = []
        self._warmup: list[Hook] = []
        self._on_drain: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._server: grpc.aio.Server | None = None
        self._stop = asyncio.Event()
        self._exit_status = 0

    # Registration (before start).
    def add_service(self, service: Service) -> None:
        self._services.append(service)

    def on_warmup(self, hook: Hook) -> None:
        """Runs after the server listens and before health reads SERVING."""
        self._warmup.append(hook)

    def on_drain(self, hook: Hook) -> None:
        """Runs when draining starts, before waiting for calls in flight."""
        self._on_drain.append(hook)

    def on_stop(self, hook: Hook) -> None:
        """Runs after the server stopped (release engines, connections)."""
        self._on_stop.append(hook)

    @property
    def stopping(self) -> asyncio.Event:
        """Set on SIGTERM/SIGINT or request_stop, also while warm-up hooks still run (a hook
        that may wait long, such as a runtime waiting for its engine, watches it)."""
        return self._stop

    @property
    def draining(self) -> bool:
        return self.interceptor.draining

    def _options(self) -> list[tuple[str, int]]:
        n = self.config.max_message_bytes
        return [
            ("grpc.max_send_message_length", n),
            ("grpc.max_receive_message_length", n),
            # Callers (the gateway) ping to tell a frozen server from a slow one: accept pings
            # every second or more, also while a stream sends nothing (a queued request).
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]

    def _bind(self, server: grpc.aio.Server) -> int:
        address = f"{self.config.host}:{self.config.port}"
        cfg = self.config
        if cfg.tls_cert is None or cfg.tls_key is None:
            return server.add_insecure_port(address)
        client_ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
        credentials = grpc.ssl_server_credentials(
            [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        return server.add_secure_port(address, credentials)

    async def start(self) -> None:
        """Listens; health reads NOT_SERVING until `set_serving`."""
        server = grpc.aio.server(interceptors=[self.interceptor], options=self._options())
        for service in self._services:
            service.add_to_server(service.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(server, [s.name for s in self._services] + [health.SERVICE_NAME])
        self.port = self._bind(server)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.host}:{self.config.port}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        log.info("%s listening on %s:%d", self.name, self.config.host, self.port)

    async def _set_health(self, status: int) -> None:
        for name in ["", *(s.name for s in self._services)]:
            await self.health.set(name, status)

    async def set_serving(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving", self.name)

    def request_stop(self) -> None:
        """Starts a drain (what SIGTERM does)."""
        self._stop.set()

    async def fail(self, reason: str) -> None:
        """Health NOT_SERVING at once, then a drain and exit status 1 (see the docstring)."""
        log.error("%s cannot serve any more: %s; stopping with exit status 1", self.name, reason)
        self._exit_status = 1
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Health checkers and load balancers see NOT_SERVING while calls are still refused
        # with UNAVAILABLE, before the port closes.
        await asyncio.sleep(FAIL_LINGER_S)
        self._stop.set()

    async def drain(self) -> None:
        """Health NOT_SERVING, refuse new calls, let calls in flight finish, then stop."""
        log.info("%s draining (grace period %.1fs)", self.name, self.config.grace_period_s)
        await self.health.enter_graceful_shutdown()
        self.interceptor.draining = True
        for hook in self._on_drain:
            await hook()
        idle = await self.interceptor.wait_idle(self.config.grace_period_s)
        if not idle:
            log.warning(
                "%s: grace period over with %d calls in flight; cancelling them",
                self.name,
                self.interceptor.num_in_flight,
            )
        if self._server is not None:
            # Idle, the only calls in flight are ones arriving now, being refused: let them
            # end with their UNAVAILABLE (a stop without grace would cancel them instead).
            await self._server.stop(grace=REFUSAL_GRACE_S if idle else 0)
        for hook in self._on_stop:
            await hook()
        log.info("%s stopped", self.name)

    async def serve(self) -> int:
        """Starts, warms up, serves until SIGTERM/SIGINT or request_stop, drains.

        Returns the process exit status: 0 after a drain, 1 when warm-up failed or `fail`
        was called.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.start()
        try:
            for hook in self._warmup:
                await hook()
        except Exception as e:
            log.error("%s failed to start: %s", self.name, e, exc_info=e)
            if self._server is not None:
                await self._server.stop(grace=0)
            for hook in self._on_stop:
                await hook()
            return 1
        if not self._stop.is_set():
            await self.set_serving()
        await self._stop.wait()
        await self.drain()
        return self._exit_status


def run_daemon(
    name: str, config: ServerConfig, setup: Callable[[Daemon], Awaitable[None] | None]
) -> int:
    """The body of a daemon's main(): logging, tracing, metrics, then serve."""
    setup_logging(config.log_level, config.log_format)
    dump_stacks_on_sigusr1()
    setup_tracing(name, config.otlp_endpoint, config.trace_file)
    start_metrics_server(config.metrics_port, config.metrics_address)

    async def main() -> int:
        daemon = Daemon(name, config)
        result = setup(daemon)
        if asyncio.iscoroutine(result):
            await result
        return await daemon.serve()

    loop_factory = uvloop.new_event_loop if config.event_loop == "uvloop" else None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())
    finally:
        shutdown_tracing()
