"""Sending one generation to a runtime, with retries on another before the first token.

A request that fails before the runtime sent anything (unreachable, draining, queue full,
cancelled by the server) is sent again to another runtime of the model, up to
`max_attempts` runtimes. Once a chunk has reached the caller the request cannot move: a
failure then ends it with UNAVAILABLE. A runtime that sends nothing for `idle_timeout_s`
(frozen, partitioned) counts as failed: before the first chunk the request moves on, after it
the call ends with UNAVAILABLE, so no stream (nor a session's lock) waits on it forever.
Each attempt runs in a CLIENT span whose W3C trace context goes to the runtime in the call's
metadata, with the caller's remaining deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from gateway import metrics
from gateway.idle import IdleWatchdog
from gateway.runtime_pool import RuntimePool
from llmserve import errors
from llmserve.reasons import Reason
from llmserve.server import rich_status
from llmserve.telemetry import metadata_from_context
from llmserve.v1 import runtime_pb2

log = logging.getLogger(__name__)
tracer = trace.get_tracer("llmserve.gateway")

# Failures before the first chunk that another runtime may not have.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
)

# The wait suggested (RetryInfo) when every runtime's queue is full.
QUEUE_FULL_RETRY_AFTER_S = 1.0


class _Silent(Exception):
    """The runtime sent nothing for idle_timeout_s; treated like UNAVAILABLE."""

    def __init__(self, idle_timeout_s: float) -> None:
        super().__init__(f"no response for {idle_timeout_s:g} s (runtime_idle_timeout_s)")

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self)


def error_from_runtime(e: grpc.aio.AioRpcError) -> errors.LLMServeError:
    """The runtime's refusal, passed on with its code (INVALID_ARGUMENT, NOT_FOUND, ...) and
    its google.rpc details (reason, field, retry hint)."""
    return rich_status.error_from_rpc(
        e.code(), f"runtime: {e.details()}", tuple(e.trailing_metadata() or ())
    )


def reply_aborted() -> errors.Unavailable:
    """The error of a reply the runtime aborted (FINISH_REASON_ABORT: it was draining)."""
    return errors.Unavailable(
        "the runtime aborted the reply (it may be draining); retry",
        reason=Reason.REPLY_ABORTED,
        retry_after_s=rich_status.DRAIN_RETRY_AFTER_S,
    )


async def generate(
    pool: RuntimePool,
    request: runtime_pb2.GenerateRequest,
    *,
    model: str,
    adapter: str = "",
    pinned: str = "",
    deadline: float | None = None,
    max_attempts: int = 3,
    idle_timeout_s: float = 60.0,
    raw: bool = False,
) -> AsyncIterator[tuple[Any, str]]:
    """Streams (chunk, runtime address) from the runtime chosen for `model`: chunks are
    GenerateResponse messages, or their bytes with `raw`.

    `deadline` is a time.monotonic() instant after which the call is pointless (the caller's
    own deadline). Raises Unavailable or ResourceExhausted when no runtime could take it.
    """
    tried: dict[str, str] = {}
    exhausted = False
    last_code = ""
    failed_over = False
    for attempt in range(1, max_attempts + 1):
        runtime = pool.choose(model, adapter=adapter, pinned=pinned, exclude=tried)
        if runtime is None:
            break
        state = runtime.state
        if attempt > 1:
            metrics.RUNTIME_RETRIES.labels(model, last_code).inc()
        if pinned and state.address != pinned and not failed_over:
            failed_over = True  # once per request, however many runtimes it then tries
            metrics.FAILOVERS.labels(model).inc()
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        started = False
        # NOTE: the span is not made current: this generator yields while it is open, and
        # the code after a yield may run in another context (see llmserve/server/interceptor).
        span = tracer.start_span(
            "llmserve.v1.Runtime/Generate",
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "net.peer.name": state.address, "attempt": attempt},
        )
        metadata = (*metadata_from_context(trace.set_span_in_context(span)), *pool.auth())
        method = runtime.generate_raw if raw else runtime.stub.Generate
        call = method(request, timeout=timeout, metadata=metadata)
        state.num_in_flight += 1
        state.num_sent_since_status += 1
        try:
            try:
                async with IdleWatchdog(idle_timeout_s) as watchdog:
                    read, eof, address = watchdog.read, grpc.aio.EOF, state.address
                    while (response := await read(call)) is not eof:
                        started = True
                        yield response, address
            except TimeoutError:
                raise _Silent(idle_timeout_s) from None
            return
        except (grpc.aio.AioRpcError, _Silent) as e:
            reason = f"{e.code().name}: {e.details()}"
            span.set_status(trace.StatusCode.ERROR, reason)
            if started:
                log.warning("runtime %s failed mid-stream: %s", state.address, reason)
                raise errors.Unavailable(
                    f"the runtime failed after the reply had started ({reason}); the"
                    " reply is incomplete, send the request again",
                    reason=Reason.RUNTIME_FAILED,
                ) from e
            if e.code() not in RETRYABLE:
                assert isinstance(e, grpc.aio.AioRpcError)
                raise error_from_runtime(e) from e
            log.warning("runtime %s failed before the first token: %s", state.address, reason)
            tried[state.address] = reason
            last_code = e.code().name
            exhausted = exhausted or e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                pool.mark_failed(state.address, reason)
        finally:
            state.num_in_flight -= 1
            call.cancel()
            span.end()
    detail = "; ".join(f"{address}: {reason}" for address, reason in tried.items())
    metrics.ROUTE_FAILURES.labels(model, "RESOURCE_EXHAUSTED" if exhausted else "UNAVAILABLE").inc()
    if exhausted:
        raise errors.ResourceExhausted(
            f"every runtime tried for model {model!r} is full ({detail}); retry later",
            reason=Reason.QUEUE_FULL,
            retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
        )
    raise errors.Unavailable(
        f"no healthy runtime serves model {model!r} now"
        + (f" (tried {detail})" if detail else "")
        + "; retry later",
        reason=Reason.NO_RUNTIME,
    )
