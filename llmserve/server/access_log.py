"""One access-log line and the RPC metrics per call, on every daemon.

The server interceptor opens a CallRecord for each call; handlers add what only they know
(`annotate(request_id=..., session_id=..., owner=..., tokens_in=..., tokens_out=...)`); when the
call ends the interceptor writes one INFO record on the `llmserve.access` logger (JSON by
default, see llmserve/logs.py) and moves `llmserve_rpc_requests_total` and
`llmserve_rpc_duration_seconds`.

A line looks like (one line in the log; wrapped here):
    {"time": "2026-12-01T14:20:01.123Z", "level": "info", "logger": "llmserve.access",
     "message": "llmserve.v1.Gateway/Chat OK 812.4 ms", "method": "llmserve.v1.Gateway/Chat",
     "code": "OK", "duration_ms": 812.4, "peer": "ipv4:127.0.0.1:51234",
     "request_id": "r-1", "session_id": "5f0c...", "owner": "alice", "tokens_in": 31,
     "tokens_out": 64, "trace_id": "4bf92f35...", "span_id": "00f067aa0ba902b7"}
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

ACCESS_LOGGER = "llmserve.access"
access_log = logging.getLogger(ACCESS_LOGGER)

RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RPC_REQUESTS = Counter(
    "llmserve_rpc_requests",
    "gRPC calls served, by method and status code (every daemon)",
    ["method", "code"],
)
RPC_DURATION = Histogram(
    "llmserve_rpc_duration_seconds",
    "gRPC call duration, from the call's start to its status (streams: to the last message)",
    ["method", "code"],
    buckets=RPC_BUCKETS,
)

# Fields a handler may set, in the order they are logged.
FIELDS = ("request_id", "session_id", "owner", "model", "adapter", "tokens_in", "tokens_out")


@dataclass
class CallRecord:
    """What is known about one call so far."""

    method: str
    peer: str = ""
    start: float = field(default_factory=time.monotonic)
    fields: dict[str, str | int] = field(default_factory=dict)


_current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "llmserve_call_record", default=None
)


def current_record() -> CallRecord | None:
    return _current.get()


def activate(record: CallRecord | None) -> contextvars.Token:
    """Makes `record` the current call's (undo with deactivate; never across a `yield`)."""
    return _current.set(record)


def deactivate(token: contextvars.Token) -> None:
    _current.reset(token)


def annotate(**fields: str | int | None) -> None:
    """Adds fields to the current call's access-log line (no-op outside a call). Empty
    strings and None are skipped, so handlers may pass what they have."""
    record = _current.get()
    if record is None:
        return
    for key, value in fields.items():
        if value is not None and value != "":
            record.fields[key] = value


def finish_call(record: CallRecord, code: str, trace_id: str = "", span_id: str = "") -> None:
    """Writes the call's access-log line and moves the RPC metrics."""
    seconds = time.monotonic() - record.start
    RPC_REQUESTS.labels(record.method, code).inc()
    RPC_DURATION.labels(record.method, code).observe(seconds)
    extra: dict[str, str | int | float] = {
        "method": record.method,
        "code": code,
        "duration_ms": round(seconds * 1000, 3),
    }
    if record.peer:
        extra["peer"] = record.peer
    for key in FIELDS:
        if key in record.fields:
            extra[key] = record.fields[key]
    if trace_id:
        extra["trace_id"], extra["span_id"] = trace_id, span_id
    access_log.info("%s %s %.1f ms", record.method, code, seconds * 1000, extra=extra)
