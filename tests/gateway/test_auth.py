"""API keys (hashed in Redis) and the per-key token bucket, on a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.auth import ApiKeys, hash_key, parse_keys_file
from gateway.ratelimit import RateLimiter
from gateway.redis_store import API_KEYS_KEY, RedisStore
from llmserve import errors
from tests.gateway.gateway_harness import run

KEY_A = "key-a-" + "0" * 16
KEY_B = "key-b-" + "1" * 16


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_keys_file_is_parsed_and_hashed(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# team keys\nalice:{KEY_A}\n\nbob:{KEY_B}\n")
    assert parse_keys_file(path) == {hash_key(KEY_A): "alice", hash_key(KEY_B): "bob"}
    for line, message in [
        ("no-colon", "expected `name:key`"),
        ("bad name:" + KEY_A, "name must be 1 to 64 letters"),
        ("carol:short", "must be 16 to 256 characters"),
    ]:
        path.write_text(line + "\n")
        with pytest.raises(ValueError, match=message) as err:
            parse_keys_file(path)
        assert f"{path}:1" in str(err.value)


def test_keys_in_redis_are_hashed_and_synced_from_the_file(
    redis_store: Callable[[], RedisStore], tmp_path: Path
) -> None:
    async def body() -> None:
        store = redis_store()
        path = tmp_path / "keys"
        path.write_text(f"alice:{KEY_A}\nbob:{KEY_B}\n")
        keys = ApiKeys(store, path)
        assert await keys.sync() == 2
        stored = await store.client.hgetall(API_KEYS_KEY)
        assert KEY_A not in str(stored) and stored[hash_key(KEY_A)] == "alice"
        assert (await keys.authenticate(bearer(KEY_A))).owner == "alice"
        with pytest.raises(errors.Unauthenticated, match="missing API key"):
            await keys.authenticate([])
        with pytest.raises(errors.Unauthenticated, match="Bearer <api key>"):
            await keys.authenticate([("authorization", KEY_A)])
        with pytest.raises(errors.Unauthenticated, match="unknown API key"):
            await keys.authenticate(bearer("x" * 20))
        path.write_text(f"alice:{KEY_A}\n")  # bob's key revoked
        assert await keys.sync() == 1
        with pytest.raises(errors.Unauthenticated, match="unknown API key"):
            await keys.authenticate(bearer(KEY_B))
        await store.close()

    run(body)


def test_rate_limit_refuses_then_recovers(redis_store: Callable[[], RedisStore]) -> None:
    async def body() -> None:
        store = redis_store()
        limiter = RateLimiter(store, rate=10, burst=3)
        key, other = uuid.uuid4().hex, uuid.uuid4().hex
        for _ in range(3):
            await limiter.check(key)
        with pytest.raises(errors.ResourceExhausted, match="rate_limit_rps") as err:
            await limiter.check(key)
        assert err.value.reason == "RATE_LIMITED"
        wait_s = err.value.retry_after_s
        assert wait_s is not None and 0 < wait_s <= 0.1
        await limiter.check(other)  # buckets are per key
        await asyncio.sleep(wait_s + 0.02)
        await limiter.check(key)  # refilled
        # Concurrent calls never take more than the bucket holds.
        burst = RateLimiter(store, rate=0.001, burst=5)
        fresh = uuid.uuid4().hex
        results = await asyncio.gather(
            *(burst.check(fresh) for _ in range(20)), return_exceptions=True
        )
        assert sum(r is None for r in results) == 5
        await store.close()

    run(body)


def test_redis_down_is_unavailable_with_a_clear_message() -> None:
    async def body() -> None:
        store = RedisStore("redis://127.0.0.1:1/0", timeout_s=0.5, retries=2)
        started = time.monotonic()
        with pytest.raises(errors.Unavailable, match=r"Redis at 127.0.0.1:1 is unreachable"):
            await ApiKeys(store, None).authenticate(bearer(KEY_A))
        assert time.monotonic() - started < 5
        await store.close()

    run(body)
