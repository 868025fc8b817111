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
- Each call runs inside a SERVER span that continues the caller's trace (W3C traceparent),
  and ends with one access-log line and the RPC metrics (llmserve/server/access_log.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from llmserve.errors import InvalidArgument, LLMServeError, Unimplemented
from llmserve.reasons import Reason
from llmserve.server import rich_status
from llmserve.server.access_log import CallRecord, activate, deactivate, finish_call
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

    async def _refuse_if_draining(self, context: grpc.aio.ServicerContext, call: _Call) -> None:
        if self.draining:
            call.close("UNAVAILABLE")
            await rich_status.abort(context, rich_status.draining())

    def _open(self, method: str, context: grpc.aio.ServicerContext) -> _Call:
        """The call's SERVER span (continuing the caller's trace) and its access record."""
        try:
            parent = context_from_metadata(context.invocation_metadata())
        except Exception as e:  # a malformed header must not fail the call
            log.debug("trace context not read from metadata: %s", e)
            parent = None
        span = self._tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": method},
            record_exception=False,
            set_status_on_exception=False,
        )
        record = CallRecord(method.lstrip("/"), peer=context.peer() or "")
        return _Call(span, trace.set_span_in_context(span, parent), record)

    def _wrap_unary(
        self, method: str, behavior: Callable[..., Any], decode: Decoder
    ) -> Callable[..., Any]:
        async def wrapped(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            call = self._open(method, context)
            await self._refuse_if_draining(context, call)
            self._enter()
            code = "OK"
            try:
                with call.active():
                    try:
                        if self.token is not None:
                            self.token.check(context.invocation_metadata())
                        request = decode_request(method, raw, decode)
                        return await behavior(request, context)
                    except (asyncio.CancelledError, grpc.aio.AbortError):
                        raise
                    except Exception as e:
                        await abort_with(context, e)
            except BaseException as e:
                code = outcome(e, context)
                raise
            finally:
                call.close(code)
                self._exit()

        return wrapped

    def _wrap_stream(
        self, method: str, behavior: Callable[..., Any], decode: Decoder
    ) -> Callable[..., Any]:
        async def wrapped(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = self._open(method, context)
            await self._refuse_if_draining(context, call)
            self._enter()
            code = "OK"
            stream: Any = None
            try:
                # NOTE: the span and record are made current once, for the rest of the call,
                # and never reset: gRPC runs each call in a task of its own (so a context of
                # its own), where they stay current across every `yield` at no cost per chunk
                # (attach/detach around each chunk cost ~1.4 µs). Nothing here resets them: the
                # code after a yield may run in another context (a cancelled call is closed by
                # gRPC), where resetting a token would fail.
                otel_context.attach(call.context)
                activate(call.record)
                if self.token is not None:
                    self.token.check(context.invocation_metadata())
                request = decode_request(method, raw, decode)
                stream = behavior(request, context)
                async for response in stream:
                    yield response
            except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit) as e:
                code = outcome(e, context)
                raise
            except Exception as e:
                try:
                    with call.active():
                        await abort_with(context, e)
                except BaseException as aborted:
                    code = outcome(aborted, context)
                    raise
            finally:
                try:
                    if stream is not None:
                        with call.active():
                            await stream.aclose()
                finally:
                    call.close(code)
                    self._exit()

        return wrapped


def outcome(e: BaseException, context: grpc.aio.ServicerContext) -> str:
    """The status code name a call ends with when `e` leaves its handler."""
    if isinstance(e, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()  # gRPC cancels a call whose deadline passed
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    if isinstance(e, grpc.aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return "UNKNOWN"


class _Call:
    """A call's span, the context that makes it current, and its access record."""

    __slots__ = ("context", "record", "span")

    def __init__(self, span: trace.Span, ctx: otel_context.Context, record: CallRecord) -> None:
        self.span, self.context, self.record = span, ctx, record

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The span and record current for a stretch of the handler with no `yield` in it."""
        otel_token = otel_context.attach(self.context)
        record_token = activate(self.record)
        try:
            yield
        finally:
            deactivate(record_token)
            otel_context.detach(otel_token)

    def close(self, code: str) -> None:
        """Ends the span with the call's status and writes the access-log line."""
        self.span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
        if code != "OK":
            self.span.set_status(trace.StatusCode.ERROR, code)
        ctx = self.span.get_span_context()
        self.span.end()
        trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else ""
        span_id = format(ctx.span_id, "016x") if ctx.is_valid else ""
        finish_call(self.record, code, trace_id, span_id)


_CODE_NUMBERS = {c.name: c.value[0] for c in grpc.StatusCode}
