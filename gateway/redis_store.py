"""The gateway's Redis: one client with retries, key names, and outage → UNAVAILABLE.

Every key starts with `llmserve:` and carries a Redis Cluster hash tag (`{...}`): all the keys
of one session share the tag `{session_id}`, so the Lua scripts that touch several of them run
on one cluster slot. Keys of different tags are never touched by one script.

    llmserve:{<session_id>}:meta       HASH   owner, model, adapter, system prompt, times, pin,
                                              version, ttl
    llmserve:{<session_id>}:messages   LIST   JSON messages, oldest first
    llmserve:{<session_id>}:replies    HASH   request id -> JSON of the stored reply
    llmserve:{<session_id>}:lock       STRING the busy lock of a turn in progress (with PX)
    llmserve:{owner:<owner>}:sessions  ZSET   session ids scored by update time (ms)
    llmserve:{apikeys}:owners          HASH   sha256(key) hex -> owner
    llmserve:{ratelimit:<key hash>}    HASH   token bucket of one API key
    llmserve:{authfail:<peer address>} HASH   token bucket of failed authentications
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from llmserve.errors import Unavailable
from llmserve.reasons import Reason

log = logging.getLogger(__name__)

PREFIX = "llmserve"


@dataclass(frozen=True)
class SessionKeys:
    """The keys of one session, all in the hash slot of `{session_id}`."""

    meta: str
    messages: str
    replies: str
    lock: str

    @classmethod
    def of(cls, session_id: str) -> SessionKeys:
        tag = f"{PREFIX}:{{{session_id}}}"
        return cls(f"{tag}:meta", f"{tag}:messages", f"{tag}:replies", f"{tag}:lock")

    def all(self) -> list[str]:
        return [self.meta, self.messages, self.replies, self.lock]


def owner_index_key(owner: str) -> str:
    return f"{PREFIX}:{{owner:{owner}}}:sessions"


API_KEYS_KEY = f"{PREFIX}:{{apikeys}}:owners"


def rate_limit_key(key_hash: str) -> str:
    return f"{PREFIX}:{{ratelimit:{key_hash}}}"


def auth_failure_key(peer: str) -> str:
    return f"{PREFIX}:{{authfail:{peer}}}"


class RedisStore:
    """An asyncio Redis client that retries failed commands with exponential backoff and turns
    a Redis outage into `Unavailable` with a message naming the server.

    Connections are made lazily: the gateway starts (and serves health) while Redis is down,
    and answers calls that need Redis with UNAVAILABLE until it is back.

    At most `max_connections` connections are open (per cluster node with `cluster`); a
    command that finds them all busy waits up to `pool_timeout_s` for one to be free (a burst
    queues instead of failing), then fails with Unavailable.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        cluster: bool = False,
        max_connections: int = 512,
        pool_timeout_s: float = 10.0,
        tls: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        self.where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port}"
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries),
            "retry_on_error": [redis_errors.ConnectionError, redis_errors.TimeoutError],
            "health_check_interval": 10,
            **(tls or {}),
        }
        # Both clients have the same commands; the cluster one sends each to its key's slot.
        if cluster:
            self.client: aioredis.Redis = aioredis.RedisCluster.from_url(  # type: ignore[assignment]
                url, max_connections=max_connections, **options
            )
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=pool_timeout_s, **options
            )
            self.client = aioredis.Redis(connection_pool=pool)

    @contextmanager
    def available(self, what: str) -> Iterator[None]:
        """Turns connection failures inside the block into Unavailable naming Redis and `what`
        (the thing that could not be done: "sessions", "API keys", ...)."""
        try:
            yield
        except (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            redis_errors.ClusterDownError,
            OSError,
        ) as e:
            log.warning("redis at %s unreachable: %s", self.where, e)
            raise Unavailable(
                f"Redis at {self.where} is unreachable ({type(e).__name__}: {e}); {what}"
                " cannot be read or written now; retry later",
                reason=Reason.SESSION_STORE_UNAVAILABLE,
            ) from e

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (redis_errors.RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()
