"""Chat sessions in Redis: create, read, list, delete, and turns that append atomically.

A turn (one Chat call) is:
1. `begin_turn`: one Lua script checks the owner, replays a completed request id, takes the
   session's busy lock (SET PX) and returns the session as it is. A second turn on a locked
   session gets Aborted("session busy").
2. The reply is generated while the lock is renewed (`renew`).
3. `commit_turn`: one Lua script appends the user and the assistant message, stores the reply
   under its request id, bumps the version, records the runtime (the pin) and drops the lock,
   only if the lock is still ours and the version unchanged. Retrying a commit whose answer
   was lost is harmless: the script knows the turn it stored last.
4. On any failure `release` drops the lock and the session is as it was.

Key layout and the hash tags that keep a session on one cluster slot: see redis_store.py.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import secrets
import uuid
from dataclasses import dataclass, replace

from redis.exceptions import RedisError

from gateway import session_scripts as scripts
from gateway.records import Message, Reply, Session, now_ms
from gateway.redis_store import RedisStore, SessionKeys, owner_index_key
from llmserve.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, shown
from llmserve.reasons import Reason

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_CHARS = 128  # encode() makes ~70


@dataclass(frozen=True, slots=True)
class Turn:
    """A turn in progress: the session as it was when the turn began, and the lock held."""

    session: Session
    lock_token: str
    request_id: str


@dataclass(frozen=True, slots=True)
class _Cursor:
    updated_ms: float
    session_id: str

    def encode(self) -> str:
        raw = json.dumps([self.updated_ms, self.session_id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> _Cursor:
        """Strict: only what `encode` makes (a finite score and a session id) is accepted."""
        invalid = InvalidArgument(
            "page_token is not a next_page_token returned by ListSessions", field="page_token"
        )
        if len(token) > MAX_PAGE_TOKEN_CHARS:
            raise invalid
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            value = json.loads(raw)
        except (ValueError, TypeError, binascii.Error, RecursionError) as e:
            raise invalid from e
        match value:
            case [int() | float() as score, str() as session_id] if (
                not isinstance(score, bool) and math.isfinite(score) and _is_session_id(session_id)
            ):
                return cls(float(score), session_id)
        raise invalid


def not_found(session_id: str) -> NotFound:
    return NotFound(
        f"session_id {shown(session_id)}: no such session for this API key (never created,"
        " expired, or deleted)",
        reason=Reason.SESSION_NOT_FOUND,
    )


class SessionStore:
    """Sessions of every owner, kept in Redis (see the module docstring)."""

    def __init__(self, redis: RedisStore, *, lock_ttl_ms: int, max_turns: int) -> None:
        self._redis = redis
        self._client = redis.client
        self.lock_ttl_ms = lock_ttl_ms
        self.max_turns = max_turns
        c = self._client
        self._get = c.register_script(scripts.GET)
        self._delete = c.register_script(scripts.DELETE)
        self._begin = c.register_script(scripts.BEGIN_TURN)
        self._commit = c.register_script(scripts.COMMIT_TURN)
        self._release = c.register_script(scripts.RELEASE)
        self._renew = c.register_script(scripts.RENEW)
        self._index_touch = c.register_script(scripts.INDEX_TOUCH)

    async def create(
        self, owner: str, model: str, adapter: str, system_prompt: str, ttl_ms: int
    ) -> Session:
        created = now_ms()
        session = Session(
            session_id=uuid.uuid4().hex,
            owner=owner,
            model=model,
            adapter=adapter,
            system_prompt=system_prompt,
            created_ms=created,
            updated_ms=created,
            ttl_ms=ttl_ms,
            expire_ms=created + ttl_ms,
            runtime="",
            version=0,
        )
        keys = SessionKeys.of(session.session_id)
        with self._redis.available("sessions"):
            # The index first: an entry whose session was never written is pruned by `list`,
            # while a session missing from the index would not be listed.
            await self._touch_index(session)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(keys.meta, mapping=session.meta_fields())
                pipe.pexpire(keys.meta, ttl_ms)
                await pipe.execute()
        return session

    async def get(self, owner: str, session_id: str) -> Session:
        """The session with its messages; refreshes its time to live."""
        keys = SessionKeys.of(_checked_id(session_id))
        with self._redis.available("sessions"):
            found = await self._get(keys=keys.all(), args=[owner])
        if not found:
            raise not_found(session_id)
        meta, pttl, messages = found
        return Session.from_meta(session_id, _pairs(meta), int(pttl), messages)

    async def delete(self, owner: str, session_id: str) -> None:
        keys = SessionKeys.of(_checked_id(session_id))
        with self._redis.available("sessions"):
            if not await self._delete(keys=keys.all(), args=[owner]):
                raise not_found(session_id)
            await self._client.zrem(owner_index_key(owner), session_id)

    async def list(
        self, owner: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Session], str]:
        """A page of the owner's sessions (without messages), most recently updated first, and
        the token of the next page ("" on the last). Entries of expired sessions are pruned."""
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size must be in [0, {MAX_PAGE_SIZE}], got {page_size}", field="page_size"
            )
        page_size = page_size or DEFAULT_PAGE_SIZE
        cursor = _Cursor.decode(page_token) if page_token else None
        index = owner_index_key(owner)
        found: list[Session] = []
        stale: list[str] = []
        offset = 0
        with self._redis.available("sessions"):
            while len(found) <= page_size:
                batch = await self._client.zrange(
                    index,
                    cursor.updated_ms if cursor else "+inf",
                    "-inf",
                    desc=True,
                    byscore=True,
                    withscores=True,
                    offset=offset,
                    num=page_size + 1,
                )
                offset += len(batch)
                ids = [
                    sid
                    for sid, score in batch
                    if cursor is None or score < cursor.updated_ms or sid < cursor.session_id
                ]
                async with self._client.pipeline(transaction=False) as pipe:
                    for sid in ids:
                        pipe.hgetall(SessionKeys.of(sid).meta)
                        pipe.pttl(SessionKeys.of(sid).meta)
                    replies = await pipe.execute()
                for i, sid in enumerate(ids):
                    meta, pttl = replies[2 * i], replies[2 * i + 1]
                    if meta and meta.get("owner") == owner:
                        found.append(Session.from_meta(sid, meta, int(pttl)))
                    else:
                        stale.append(sid)
                if len(batch) < page_size + 1:
                    break
            if stale:
                await self._client.zrem(index, *stale)
        page = found[:page_size]
        more = len(found) > page_size
        next_token = _Cursor(page[-1].updated_ms, page[-1].session_id).encode() if more else ""
        return page, next_token

    async def begin_turn(self, owner: str, session_id: str, request_id: str) -> Turn | Reply:
        """Takes the session's busy lock and returns the Turn, or the stored Reply when
        `request_id` already completed. NotFound, Aborted (busy), FailedPrecondition (full)."""
        keys = SessionKeys.of(_checked_id(session_id))
        token = secrets.token_hex(16)
        args = [owner, request_id, token, self.lock_ttl_ms, 2 * self.max_turns]
        with self._redis.available("sessions"):
            result = await self._begin(keys=keys.all(), args=args)
        status = result[0]
        if status == "missing":
            raise not_found(session_id)
        if status == "replay":
            return Reply.from_json(result[1])
        if status == "busy":
            raise Aborted(
                f"session busy: session_id {session_id!r} has a Chat in progress; a session"
                " takes one turn at a time, retry when it has finished",
                reason=Reason.SESSION_BUSY,
            )
        if status == "full":
            raise FailedPrecondition(
                f"session_id {shown(session_id)} holds {self.max_turns} turns, the most a session"
                " may hold (max_session_turns); start a new session",
                reason=Reason.SESSION_FULL,
            )
        _, meta, pttl, messages = result
        session = Session.from_meta(session_id, _pairs(meta), int(pttl), messages)
        return Turn(session=session, lock_token=token, request_id=request_id)

    async def renew(self, turn: Turn) -> bool:
        """Extends the turn's lock; False if it is no longer held."""
        lock = SessionKeys.of(turn.session.session_id).lock
        with self._redis.available("sessions"):
            return bool(await self._renew(keys=[lock], args=[turn.lock_token, self.lock_ttl_ms]))

    async def release(self, turn: Turn) -> None:
        """Drops the turn's lock without storing anything: the session stays as it was."""
        lock = SessionKeys.of(turn.session.session_id).lock
        with self._redis.available("sessions"):
            await self._release(keys=[lock], args=[turn.lock_token])

    async def commit_turn(
        self, turn: Turn, user: Message, assistant: Message, reply: Reply, runtime: str
    ) -> Session:
        """Appends the user and assistant messages atomically; returns the session after."""
        s = turn.session
        keys = SessionKeys.of(s.session_id)
        updated = now_ms()
        args = [
            turn.lock_token,
            s.version,
            updated,
            user.to_json(),
            assistant.to_json(),
            turn.request_id,
            reply.to_json(),
            runtime,
        ]
        with self._redis.available("sessions"):
            result = await self._commit(keys=keys.all(), args=args)
            status = result[0]
            if status == "missing":
                raise not_found(s.session_id)
            if status in ("lost", "conflict"):
                raise Aborted(
                    f"session_id {s.session_id!r} changed while the reply was generated (the"
                    " turn's lock expired and another turn ran); this reply was not stored",
                    reason=Reason.SESSION_CHANGED,
                )
            after = replace(
                s,
                updated_ms=updated,
                expire_ms=updated + s.ttl_ms,
                runtime=runtime,
                version=int(result[1]),
                messages=(*s.messages, user, assistant),
            )
        try:
            await self._touch_index(after)
        except (RedisError, OSError) as e:
            # The turn is stored; only the session's place in ListSessions' order is stale.
            log.warning("session %s: index not updated: %s", s.session_id, e)
        return after

    async def _touch_index(self, session: Session) -> None:
        await self._index_touch(
            keys=[owner_index_key(session.owner)],
            args=[session.updated_ms, session.session_id, session.ttl_ms],
        )


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _checked_id(session_id: str) -> str:
    """Session ids are 32 hex digits; anything else cannot name a session (nor a key)."""
    if not session_id:
        raise InvalidArgument(
            "session_id is required", reason=Reason.FIELD_REQUIRED, field="session_id"
        )
    if not _is_session_id(session_id):
        raise not_found(session_id)
    return session_id


def _is_session_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
