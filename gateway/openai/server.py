"""The HTTP listener of the OpenAI-compatible API, inside the gateway daemon.

uvicorn serves a Starlette app on the daemon's own event loop, next to grpc.aio, so both
protocols share the servicer, its Redis clients and its runtime channels. The daemon keeps
the signals: on SIGTERM the HTTP side drains with the gRPC side (new calls get 503, calls in
flight may finish within the grace period), then stops.

Every HTTP call but GET /health runs inside `HttpCalls`: refused with 503 while draining,
counted in flight for the drain, inside a SERVER span that continues the caller's W3C
`traceparent` (the runtime calls are its children, as for gRPC), and logged once when it ends
(method, path, status, duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config import GatewayConfig
from gateway.openai.replies import Receive, Send, send_error
from gateway.openai.responses import ErrorBody, ErrorResponse
from gateway.openai.routes import OpenAIRoutes
from gateway.service import GatewayServicer
from llmserve.errors import InvalidArgument
from llmserve.server import Daemon, rich_status
from llmserve.telemetry import context_from_metadata

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.http.access")
tracer = trace.get_tracer("llmserve.gateway.http")

UNTRACKED = ("/health",)


class HttpCalls:
    """ASGI middleware: drain, in-flight count, span and access log (module docstring)."""

    def __init__(self, app: Any, daemon: Daemon, max_body_bytes: int) -> None:
        self.app = app
        self.daemon = daemon
        self.max_body_bytes = max_body_bytes
        self.num_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACKED:
            await self.app(scope, receive, send)
            return
        if self.daemon.draining:
            await send_error(send, rich_status.draining_error())
            return
        method, path = scope["method"], scope["path"]
        status = 0
        size = dict(scope["headers"]).get(b"content-length", b"0")
        if size.isdigit() and int(size) > self.max_body_bytes:
            message = (
                f"request body is {int(size)} bytes, more than the limit of"
                f" {self.max_body_bytes} bytes (max_message_bytes)"
            )
            await send_error(send, InvalidArgument(message))
            return

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        started = time.monotonic()
        self.num_in_flight += 1
        self._idle.clear()
        try:
            with tracer.start_as_current_span(
                f"{method} {path}",
                context=context_from_metadata(headers),
                kind=trace.SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": path},
            ) as span:
                try:
                    await self.app(scope, receive, send_status)
                finally:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500 or status == 0:
                        span.set_status(trace.StatusCode.ERROR)
        finally:
            self.num_in_flight -= 1
            if self.num_in_flight == 0:
                self._idle.set()
            ms = (time.monotonic() - started) * 1000
            client = scope.get("client") or ("", 0)
            access_log.info(
                "%s %s %d %.1fms",
                method,
                path,
                status,
                ms,
                extra={"method": method, "path": path, "status": status,
                       "duration_ms": round(ms, 3), "client": client[0]},
            )  # fmt: skip


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the daemon owns SIGTERM and SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on `host` as the gRPC listener takes it ("0.0.0.0", "[::]", ...)."""
    host = host.strip("[]")
    if ":" not in host:
        return socket.create_server((host, port))
    dualstack = host == "::" and socket.has_dualstack_ipv6()
    return socket.create_server((host, port), family=socket.AF_INET6, dualstack_ipv6=dualstack)


def build_app(servicer: GatewayServicer, daemon: Daemon) -> HttpCalls:
    async def health(request: Request) -> JSONResponse:
        if daemon.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "serving"})

    async def http_error(request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (unknown path, wrong method) in OpenAI's shape."""
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        body = ErrorResponse(error=ErrorBody(message=message, type=kind))
        return Response(body.model_dump_json(), exc.status_code, media_type="application/json")

    routes = [Route("/health", health, methods=["GET"]), *OpenAIRoutes(servicer).routes()]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return HttpCalls(app, daemon, servicer.config.max_message_bytes)


def serve_http(daemon: Daemon, config: GatewayConfig, servicer: GatewayServicer) -> None:
    """Adds the HTTP API to the daemon: it listens once the gateway has warmed up, and drains
    and stops with it. Call after the gateway's own hooks are registered."""
    assert config.http_port is not None
    app = build_app(servicer, daemon)
    tls = {}
    if config.tls_cert is not None and config.tls_key is not None:
        tls = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)}
        if config.tls_client_ca is not None:
            tls |= {"ssl_ca_certs": str(config.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    uv_config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,  # calls in flight had the grace period already
        **tls,  # type: ignore[arg-type]
    )
    server = _Server(uv_config)
    task: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal task
        sock = _listen(config.host, config.http_port or 0)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"HTTP API did not start on {config.host}:{config.http_port}")
            await asyncio.sleep(0.01)
        port = sock.getsockname()[1]
        log.info("OpenAI-compatible HTTP API on http://%s:%d/v1", config.host, port)

    async def drain() -> None:
        if task is None:
            return
        if not await app.wait_idle(config.grace_period_s):
            log.warning("grace period over with %d HTTP calls in flight", app.num_in_flight)
        server.should_exit = True  # closes the listener; cancels what is left after 1 s
        await task

    daemon.on_warmup(start)
    daemon.on_drain(drain)
