"""The one server interceptor: error mapping, drain, in-flight tracking and a span per call.

- Exceptions become gRPC statuses with google.rpc details (llmserve/server/rich_status.py): an
  LLMServeError carries its own code, message, reason, field and retry hint; any other
  exception is INTERNAL with its type and message, and is logged with its traceback.
- Requests are decoded here, not by gRPC: bytes that are not a valid message (malformed
  protobuf, invalid UTF-8 in a string field) are INVALID_ARGUMENT naming the message type
  (gRPC itself would answer UNKNOWN).
- While draining, every call except health and reflection is refused with UNAVAILABLE
  (reason DRAINING, with RetryInfo).
- With a service token (llmserve/server/token.py), every call except health and reflection
  must carry it (UNAUTHENTICATED otherwise).
- Calls in flight are counted so that a drain can wait for them.
- Each call runs inside a SERVER span that continues the caller's trace (W3C traceparent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace

from llmserve.errors import InvalidArgument, LLMServeError, Unimplemented
from llmserve.reasons import Reason
from llmserve.server import rich_status
from llmserve.server.token import ServiceToken
from llmserve.telemetry import context_from_metadata

log = logging.getLogger(__name__)

Decoder = Callable[[bytes], Any] | None
MAX_DETAILS_CHARS = 2048

# Calls that keep working while draining and are not waited for.
_EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


def bounded(details: str) -> str:
    """Status details cut to MAX_DETAILS_CHARS (they travel in a size-limited header)."""
    if len(details) <= MAX_DETAILS_CHARS:
        return details
    return f"{details[: MAX_DETAILS_CHARS - 40]}... ({len(details)} characters, cut)"


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Ends the call with the status that `exc` maps to (raises grpc.aio.AbortError)."""
    if isinstance(exc, LLMServeError):
        error = exc
    elif isinstance(exc, NotImplementedError):
        error = Unimplemented(str(exc) or "not implemented")
    else:
        log.error("internal error", exc_info=exc)
        error = LLMServeError(f"internal error: {type(exc).__name__}: {exc}")
    await rich_status.abort(context, rich_status.to_status(error, bounded(error.message)))


def decode_request(method: str, raw: bytes, decode: Decoder) -> Any:
    """The request message of `method` from its bytes; InvalidArgument if they are not one."""
    if decode is None:
        return raw
    try:
        return decode(raw)
    except Exception as e:  # google.protobuf.message.DecodeError, UnicodeDecodeError, ...
        raise InvalidArgument(
            f"the request to {method} is not a valid protobuf message ({len(raw)} bytes):"
            f" {type(e).__name__}: {str(e)[:200]} (string fields must be UTF-8)",
            reason=Reason.MALFORMED_REQUEST,
        ) from e


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring. One instance per server."""

    def __init__(self, token: ServiceToken | None = None) -> None:
        self.token = token
        self.draining = False
        self._num_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tracer = trace.get_tracer("llmserve.server")

    @property
    def num_in_flight(self) -> int:
        return self._num_in_flight

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no call is in flight, up to `timeout` seconds; True if idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_EXEMPT_PREFIXES):
            return handler
        method = details.method
        if handler.request_streaming:
            # The contract has no client-streaming calls; serve them unwrapped if one appears.
            return handler
        decode = handler.request_deserializer
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, decode),
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._wrap_unary(method, handler.unary_unary, decode),
            response_serializer=handler.response_serializer,
        )

    def _enter(self) -> None:
        self._num_in_flight += 1
        self._idle.clear()

    def _exit(self) -> None:
        self._num_in_flight -= 1
        if self._num_in_flight == 0:
            self._idle.set()

    async def _refuse_if_draining(self, context: grpc.aio.ServicerContext) -> None:
        if self.draining:
            await rich_status.abort(context, rich_status.draining())

    def _span(self, method: str, context: grpc.aio.ServicerContext) -> Any:
        try:
            parent = context_from_metadata(context.invocation_metadata())
        except Exception as e:  # a malformed header must not fail the call
            log.debug("trace context not read from metadata: %s", e)
            parent = None
        return self._tracer.start_as_current_span(
            method.lstrip("/"),
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": method},
            record_exception=False,
            set_status_on_exception=False,
        )

    def _wrap_unary(
        self, method: str, behavior: Callable[..., Any], decode: Decoder
    ) -> Callable[..., Any]:
        async def wrapped(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            await self._refuse_if_draining(context)
            self._enter()
            try:
                with self._span(method, context):
                    try:
                        if self.token is not None:
                            self.token.check(context.invocation_metadata())
                        request = decode_request(method, raw, decode)
                        return await behavior(request, context)
                    except (asyncio.CancelledError, grpc.aio.AbortError):
                        raise
                    except Exception as e:
                        await abort_with(context, e)
            finally:
                self._exit()

        return wrapped

    def _wrap_stream(
        self, method: str, behavior: Callable[..., Any], decode: Decoder
    ) -> Callable[..., Any]:
        async def wrapped(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._refuse_if_draining(context)
            self._enter()
            try:
                with self._span(method, context):
                    try:
                        if self.token is not None:
                            self.token.check(context.invocation_metadata())
                        request = decode_request(method, raw, decode)
                        async for response in behavior(request, context):
                            yield response
                    except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
                        raise
                    except Exception as e:
                        await abort_with(context, e)
            finally:
                self._exit()

        return wrapped
