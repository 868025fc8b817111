"""Sessions on a real redis-server: turns, busy lock, idempotency, versions, TTL, listing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from redis.crc import key_slot

from gateway.records import Message, Reply, Usage
from gateway.redis_store import RedisStore, SessionKeys
from gateway.sessions import SessionStore, Turn
from llmserve import errors
from tests.gateway.gateway_harness import run

TTL_MS = 60_000


def owner() -> str:
    return "owner-" + uuid.uuid4().hex[:8]


def make_store(redis_store: Callable[[], RedisStore], **kwargs: int) -> SessionStore:
    return SessionStore(
        redis_store(),
        lock_ttl_ms=kwargs.get("lock_ttl_ms", 5_000),
        max_turns=kwargs.get("max_turns", 100),
    )


async def take_turn(
    store: SessionStore, who: str, sid: str, text: str, request_id: str = ""
) -> Turn:
    turn = await store.begin_turn(who, sid, request_id)
    assert isinstance(turn, Turn)
    user = Message("user", text, 0, 1)
    reply = Reply(f"re: {text}", (1, 2), "stop", Usage(10, 2, 0))
    await store.commit_turn(turn, user, Message("assistant", reply.text, 2, 2), reply, "rt-a")
    return turn


def test_create_get_delete_and_owner_isolation(redis_store: Callable[[], RedisStore]) -> None:
    async def body() -> None:
        store = make_store(redis_store)
        alice, bob = owner(), owner()
        created = await store.create(alice, "m", "ad", "be brief", TTL_MS)
        got = await store.get(alice, created.session_id)
        assert (got.model, got.adapter, got.system_prompt, got.messages) == (
            "m",
            "ad",
            "be brief",
            (),
        )
        assert got.version == 0 and got.runtime == "" and got.ttl_ms == TTL_MS
        with pytest.raises(errors.NotFound, match="no such session for this API key"):
            await store.get(bob, created.session_id)
        with pytest.raises(errors.NotFound):
            await store.delete(bob, created.session_id)
        with pytest.raises(errors.NotFound):
            await store.begin_turn(bob, created.session_id, "")
        with pytest.raises(errors.NotFound):
            await store.get(alice, "not-a-session-id")
        with pytest.raises(errors.InvalidArgument, match="session_id is required"):
            await store.get(alice, "")
        await store.delete(alice, created.session_id)
        with pytest.raises(errors.NotFound):
            await store.get(alice, created.session_id)

    run(body)


def test_turns_append_in_order_with_version_and_pin(redis_store: Callable[[], RedisStore]) -> None:
    async def body() -> None:
        store = make_store(redis_store)
        who = owner()
        sid = (await store.create(who, "m", "", "", TTL_MS)).session_id
        for i in range(3):
            await take_turn(store, who, sid, f"q{i}")
        session = await store.get(who, sid)
        assert [(m.role, m.content) for m in session.messages] == [
            (role, text)
            for i in range(3)
            for role, text in (("user", f"q{i}"), ("assistant", f"re: q{i}"))
        ]
        assert session.version == 3 and session.runtime == "rt-a"

    run(body)


def test_second_turn_on_a_busy_session_is_aborted(redis_store: Callable[[], RedisStore]) -> None:
    async def body() -> None:
        store = make_store(redis_store)
        who = owner()
        sid = (await store.create(who, "m", "", "", TTL_MS)).session_id
        results = await asyncio.gather(
            *(store.begin_turn(who, sid, "") for _ in range(20)), return_exceptions=True
        )
        turns = [r for r in results if isinstance(r, Turn)]
        busy = [r for r in results if isinstance(r, errors.Aborted)]
        assert len(turns) == 1 and len(busy) == 19
        assert "session busy" in str(busy[0])
        await store.release(turns[0])
        turn = await store.begin_turn(who, sid, "")  # free again
        assert isinstance(turn, Turn)
        await store.release(turn)
        assert (await store.get(who, sid)).messages == ()

    run(body)


def test_completed_request_id_is_replayed_not_appended(
    redis_store: Callable[[], RedisStore],
) -> None:
    async def body() -> None:
        store = make_store(redis_store)
        who = owner()
        sid = (await store.create(who, "m", "", "", TTL_MS)).session_id
        await take_turn(store, who, sid, "hello", request_id="req-1")
        again = await store.begin_turn(who, sid, "req-1")
        assert again == Reply("re: hello", (1, 2), "stop", Usage(10, 2, 0))
        session = await store.get(who, sid)
        assert len(session.messages) == 2 and session.version == 1
        # A replay takes no lock: a new turn may start at once.
        turn = await store.begin_turn(who, sid, "req-2")
        assert isinstance(turn, Turn)
        await store.release(turn)

    run(body)


def test_retried_commit_stores_the_turn_once(redis_store: Callable[[], RedisStore]) -> None:
    async def body() -> None:
        store = make_store(redis_store)
        who = owner()
        sid = (await store.create(who, "m", "", "", TTL_MS)).session_id
        turn = await store.begin_turn(who, sid, "")
        assert isinstance(turn, Turn)
        user, assistant, reply = Message("user", "u"), Message("assistant", "a"), Reply("a")
        first = await store.commit_turn(turn, user, assistant, reply, "rt")
        second = await store.commit_turn(turn, user, assistant, reply, "rt")  # answer was lost
        assert first.version == second.version == 1
        assert len((await store.get(who, sid)).messages) == 2

    run(body)


def test_expired_lock_and_a_newer_turn_refuse_the_stale_commit(
    redis_store: Callable[[], RedisStore],
) -> None:
    async def body() -> None:
        store = make_store(redis_store, lock_ttl_ms=200)
        who = owner()
        sid = (await store.create(who, "m", "", "", TTL_MS)).session_id
        stale = await store.begin_turn(who, sid, "")
        assert isinstance(stale, Turn)
        await asyncio.sleep(0.3)  # the stale turn's lock expires
        assert not await store.renew(stale)
        await take_turn(store, who, sid, "newer")
        with pytest.raises(errors.Aborted, match="changed while the reply was generated"):
            await store.commit_turn(
                stale, Message("user", "x"), Message("assistant", "y"), Reply("y"), "rt"
            )
        session = await store.get(who, sid)
        assert [m.content for m in session.messages] == ["newer", "re: newer"]

    run(body)


def test_session_full(redis_store: Callable[[], RedisStore]) -> None:
    async def body() -> None:
        store = make_store(redis_store, max_turns=1)
        who = owner()
        sid = (await store.create(who, "m", "", "", TTL_MS)).session_id
        await take_turn(store, who, sid, "one")
        with pytest.raises(errors.FailedPrecondition, match="max_session_turns"):
            await store.begin_turn(who, sid, "")

    run(body)


def test_ttl_is_refreshed_on_use_and_expires_every_key(
    redis_store: Callable[[], RedisStore],
) -> None:
    async def body() -> None:
        store = make_store(redis_store)
        client = store._client
        who = owner()
        sid = (await store.create(who, "m", "", "", 600)).session_id
        await take_turn(store, who, sid, "hi", request_id="r")
        keys = SessionKeys.of(sid)
        for _ in range(3):  # used every 0.3 s: outlives its 0.6 s TTL
            await asyncio.sleep(0.3)
            assert (await store.get(who, sid)).expire_ms > 0
        assert 0 < await client.pttl(keys.messages) <= 600
        await asyncio.sleep(0.8)
        with pytest.raises(errors.NotFound):
            await store.get(who, sid)
        assert await client.exists(keys.meta, keys.messages, keys.replies) == 0

    run(body)


def test_list_pages_most_recent_first_and_prunes_gone_sessions(
    redis_store: Callable[[], RedisStore],
) -> None:
    async def body() -> None:
        store = make_store(redis_store)
        who = owner()
        ids = []
        for _ in range(5):
            ids.append((await store.create(who, "m", "", "", TTL_MS)).session_id)
            await asyncio.sleep(0.003)
        await store.create(owner(), "m", "", "", TTL_MS)  # someone else's
        await take_turn(store, who, ids[1], "bump")  # now the most recent
        await store.delete(who, ids[3])
        expected = [ids[1], ids[4], ids[2], ids[0]]
        seen, token = [], ""
        for _ in range(3):
            page, token = await store.list(who, page_size=2, page_token=token)
            seen += [s.session_id for s in page]
            assert all(s.messages == () for s in page)
            if not token:
                break
        assert seen == expected and token == ""
        everything, last = await store.list(who)
        assert [s.session_id for s in everything] == expected and last == ""
        with pytest.raises(errors.InvalidArgument, match="page_token"):
            await store.list(who, page_token="garbage!")
        with pytest.raises(errors.InvalidArgument, match=r"page_size must be in \[0, 1000\]"):
            await store.list(who, page_size=1001)

    run(body)


def test_keys_of_a_session_share_one_cluster_slot() -> None:
    sid = uuid.uuid4().hex
    slots = {key_slot(k.encode()) for k in SessionKeys.of(sid).all()}
    assert len(slots) == 1
    assert all(k.startswith(f"llmserve:{{{sid}}}:") for k in SessionKeys.of(sid).all())
