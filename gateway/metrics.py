"""Prometheus metrics of the gateway (besides llmserve_rpc_* of every daemon, which count its
calls by method and code and time them: llmserve/server/access_log.py).

Module-level series in the default registry, as the Prometheus client intends; the gateway's
parts move them where the event happens (auth, rate limits, routing, Redis, Chat turns)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge

from llmserve.errors import ResourceExhausted
from llmserve.server.access_log import annotate

AUTH_FAILURES = Counter(
    "llmserve_gateway_auth_failures",
    "Calls refused UNAUTHENTICATED, by reason (missing, malformed or unknown API key)",
    ["reason"],
)
RATE_LIMITED = Counter(
    "llmserve_gateway_rate_limited",
    "Calls refused RESOURCE_EXHAUSTED by a rate limit (api_key: the key's own limit;"
    " failed_auth: the peer's limit on failed authentications)",
    ["limit"],
)
RUNTIME_RETRIES = Counter(
    "llmserve_gateway_runtime_retries",
    "Requests sent again to another runtime after one failed before the first token",
    ["model", "code"],
)
FAILOVERS = Counter(
    "llmserve_gateway_session_failovers",
    "Session turns served by another runtime than the one the session was pinned to",
    ["model"],
)
ROUTE_FAILURES = Counter(
    "llmserve_gateway_route_failures",
    "Requests no runtime could take (every runtime tried failed, or none serves the model)",
    ["model", "code"],
)
ACTIVE_STREAMS = Gauge(
    "llmserve_gateway_active_streams",
    "Generate and Chat calls streaming now (Chat: sessions with a turn in progress)",
    ["method"],
)
SESSIONS = Counter(
    "llmserve_gateway_sessions",
    "Session events: created, deleted, turn_committed",
    ["event"],
)
REDIS_ERRORS = Counter(
    "llmserve_gateway_redis_errors",
    "Redis operations that failed to reach Redis (connection, timeout, cluster down)",
    ["what"],
)


def annotate_usage(chunk: Any) -> None:
    """The access log's token counts, from a runtime chunk that carries usage (the last)."""
    if chunk.HasField("usage"):
        annotate(tokens_in=chunk.usage.prompt_tokens, tokens_out=chunk.usage.completion_tokens)


@contextlib.contextmanager
def counted_refusal(limit: str) -> Iterator[None]:
    """Counts a rate-limit refusal (ResourceExhausted) raised inside the block."""
    try:
        yield
    except ResourceExhausted:
        RATE_LIMITED.labels(limit).inc()
        raise
