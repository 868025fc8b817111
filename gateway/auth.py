"""API keys: `authorization: Bearer <key>` → the key's owner, with keys kept hashed in Redis.

The keys file has one `name:key` per line (blank lines and `#` comments are skipped). Every
key is stored in Redis as sha256(key) → name; the name is the owner of the sessions the key
creates. Two keys with one name share their sessions (rotate a key by adding the new one
under the same name, then removing the old). The file is the source of truth: a sync
replaces the whole set in Redis in one transaction; the gateway syncs at start and every
`api_keys_sync_s` (so a key removed from a mounted Secret stops working, and a Redis that lost
its data gets the keys back). Without a keys file the gateway leaves the keys in Redis as they
are (managed by something else).

A key that Redis does not know makes the gateway re-read the file and sync at once, at most
once per `miss_sync_s` (so a Redis restarted empty, or a key just added to the file, is known
within that time, and unknown keys cannot make the gateway read the file more often).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.redis_store import API_KEYS_KEY, RedisStore
from llmserve.errors import Unauthenticated
from llmserve.reasons import Reason

log = logging.getLogger(__name__)

OWNER_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 256


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call: the owner of the key, and the key's hash (rate limits are per key)."""

    owner: str
    key_hash: str


def parse_keys_file(path: Path) -> dict[str, str]:
    """{sha256(key): owner} from a keys file; ValueError naming the line on a bad one."""
    hashed: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, key = line.partition(":")
        where = f"{path}:{number}"
        if not sep:
            raise ValueError(f"{where}: expected `name:key`")
        if not OWNER_PATTERN.match(name):
            raise ValueError(
                f"{where}: name must be 1 to 64 letters, digits, '.', '_' or '-', got {name!r}"
            )
        if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS or any(c.isspace() for c in key):
            raise ValueError(
                f"{where}: key of {name!r} must be {MIN_KEY_CHARS} to {MAX_KEY_CHARS} characters"
                " without spaces"
            )
        hashed[hash_key(key)] = name
    return hashed


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The API key in `authorization: Bearer <key>` metadata; Unauthenticated otherwise."""
    values = [v for k, v in metadata or () if k.lower() == "authorization"]
    if not values:
        raise Unauthenticated(
            "missing API key: send metadata `authorization: Bearer <api key>`",
            reason=Reason.API_KEY_MISSING,
        )
    value = values[0].decode() if isinstance(values[0], bytes) else values[0]
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "authorization metadata must be `Bearer <api key>`", reason=Reason.API_KEY_MALFORMED
        )
    return token.strip()


class ApiKeys:
    """Looks keys up in Redis and keeps Redis in line with the keys file."""

    def __init__(
        self, redis: RedisStore, keys_file: Path | None, *, miss_sync_s: float = 1.0
    ) -> None:
        self._redis = redis
        self.keys_file = keys_file
        self.miss_sync_s = miss_sync_s
        self._next_miss_sync = 0.0  # time.monotonic() from which a miss may sync again
        self._miss_lock = asyncio.Lock()

    def load_file(self) -> dict[str, str]:
        """The file's keys, hashed ({} without a file); ValueError on a malformed file."""
        if self.keys_file is None:
            return {}
        return parse_keys_file(self.keys_file)

    async def sync(self, hashed: dict[str, str] | None = None) -> int:
        """Replaces the keys in Redis with the file's, atomically; returns how many. Does
        nothing without a keys file."""
        if self.keys_file is None:
            return 0
        hashed = self.load_file() if hashed is None else hashed
        with self._redis.available("API keys"):
            async with self._redis.client.pipeline(transaction=True) as pipe:
                pipe.delete(API_KEYS_KEY)
                if hashed:
                    pipe.hset(API_KEYS_KEY, mapping=hashed)
                await pipe.execute()
        return len(hashed)

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller:
        key_hash = hash_key(bearer_token(metadata))
        with self._redis.available("API keys"):
            owner = await self._redis.client.hget(API_KEYS_KEY, key_hash)
        if owner is None:
            owner = await self._on_miss(key_hash)
        if owner is None:
            raise Unauthenticated("unknown API key", reason=Reason.API_KEY_UNKNOWN)
        return Caller(owner=owner, key_hash=key_hash)

    async def _on_miss(self, key_hash: str) -> str | None:
        """The key's owner from the keys file, re-read and synced (see the module docstring)."""
        if self.keys_file is None:
            return None
        async with self._miss_lock:
            if time.monotonic() < self._next_miss_sync:
                return None
            self._next_miss_sync = time.monotonic() + self.miss_sync_s
            try:
                hashed = await asyncio.to_thread(self.load_file)
            except (OSError, ValueError) as e:
                log.error("API keys file unusable, keeping the keys in Redis: %s", e)
                return None
            await self.sync(hashed)
            return hashed.get(key_hash)
