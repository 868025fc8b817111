"""The llmserve.v1.Gateway servicer: protobuf in and out, the work done by the other modules.

Every call: API key → owner (auth.py), the key's rate limit (ratelimit.py), then the call.

What a Chat client sees (the session changes only when the last chunk arrives):
- a stream of chunks whose last one has a finish reason: the user message and the reply are
  stored, in that order, as one turn;
- a stream that ends with an error, possibly after some chunks (the runtime failed after the
  first token, the deadline passed, the call was cancelled, Redis went away): nothing is
  stored, the session is as it was; sending the turn again is safe;
- a single chunk with `replayed` set: the request id had completed, its stored reply is sent
  again and nothing is appended;
- ABORTED "session busy": another Chat on the session is in progress.
The final chunk is held back until the turn is stored, so a client that has it knows the turn
is in the session; if that chunk is lost in transit, a retry with the same request id replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from gateway import metrics, pb, runtime_client
from gateway.auth import ApiKeys, Caller, auth_failure_reason
from gateway.coalesce import coalesced
from gateway.config import GatewayConfig
from gateway.ratelimit import FailedAuthLimiter, RateLimiter, peer_address
from gateway.records import Message, Reply, Session, now_ms
from gateway.relay import ChunkRelay
from gateway.runtime_pool import RuntimePool
from gateway.sessions import SessionStore, Turn
from gateway.validation import check_model, check_request_id, check_text, check_ttl_ms
from llmserve.errors import InvalidArgument, LLMServeError, Unauthenticated, Unavailable
from llmserve.reasons import Reason
from llmserve.server.access_log import annotate
from llmserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, runtime_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")


def runtime_request_id(owner: str, request_id: str) -> str:
    """The id a runtime sees: scoped by the owner, so that one owner's ids never collide with
    (nor reveal) another's. Owners are at most 64 characters and contain no '/'."""
    return f"{owner}/{request_id}"


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as a time.monotonic() instant, or None without one."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:
        return None
    return time.monotonic() + remaining


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self,
        config: GatewayConfig,
        keys: ApiKeys,
        limiter: RateLimiter,
        sessions: SessionStore,
        pool: RuntimePool,
        failures: FailedAuthLimiter | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.limiter = limiter
        self.sessions = sessions
        self.pool = pool
        self.failures = failures

    async def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        return await self.authorize(
            context.invocation_metadata(), peer_address(context.peer() or "")
        )

    async def authorize(
        self, metadata: Sequence[tuple[str, str | bytes]] | None, peer: str
    ) -> Caller:
        """The caller of `authorization: Bearer <key>` in `metadata` (gRPC metadata or HTTP
        headers) from address `peer`, once its key's rate limit allowed the call; failed
        authentications count against the peer's own limit."""
        if self.failures is not None:
            with metrics.counted_refusal("failed_auth"):
                await self.failures.check_peer(peer)
        try:
            caller = await self.keys.authenticate(metadata)
        except Unauthenticated:
            metrics.AUTH_FAILURES.labels(auth_failure_reason(metadata)).inc()
            if self.failures is not None:
                await self.failures.failed(peer)
            raise
        annotate(owner=caller.owner)
        with metrics.counted_refusal("api_key"):
            await self.limiter.check(caller.key_hash)
        return caller

    def _check_text(self, field: str, text: str, *, required: bool) -> str:
        return check_text(field, text, self.config.max_chat_message_bytes, required=required)

    async def CreateSession(self, request: Any, context: Any) -> Any:
        caller = await self._caller(context)
        session = await self.create_session(caller, request)
        return gateway_pb2.CreateSessionResponse(session=pb.session_pb(session))

    async def create_session(self, caller: Caller, request: Any) -> Session:
        """CreateSession's work for an authorized caller (shared with the HTTP API)."""
        model = check_model(self.pool.models(), request.model, request.adapter)
        system_prompt = self._check_text("system_prompt", request.system_prompt, required=False)
        ttl_ms = check_ttl_ms(
            request.ttl_ns if request.HasField("ttl_ns") else None,
            self.config.session_ttl_s,
            self.config.max_session_ttl_s,
        )
        session = await self.sessions.create(
            caller.owner, model.name, request.adapter, system_prompt, ttl_ms
        )
        metrics.SESSIONS.labels("created").inc()
        annotate(session_id=session.session_id)
        return session

    async def GetSession(self, request: Any, context: Any) -> Any:
        caller = await self._caller(context)
        annotate(session_id=request.session_id)
        session = await self.sessions.get(caller.owner, request.session_id)
        return gateway_pb2.GetSessionResponse(session=pb.session_pb(session))

    async def ListSessions(self, request: Any, context: Any) -> Any:
        caller = await self._caller(context)
        page, token = await self.sessions.list(caller.owner, request.page_size, request.page_token)
        return gateway_pb2.ListSessionsResponse(
            sessions=[pb.session_pb(s) for s in page], next_page_token=token
        )

    async def DeleteSession(self, request: Any, context: Any) -> Any:
        caller = await self._caller(context)
        annotate(session_id=request.session_id)
        await self.sessions.delete(caller.owner, request.session_id)
        metrics.SESSIONS.labels("deleted").inc()
        return gateway_pb2.DeleteSessionResponse()

    async def ListModels(self, request: Any, context: Any) -> Any:
        await self._caller(context)
        return gateway_pb2.ListModelsResponse(models=[pb.model_pb(m) for m in self.pool.models()])

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """Chunks that need no change but their request id are relayed as bytes (relay.py:
        the method's serializer passes them on); with relay_coalesce, the runtime chunks that
        arrive while the caller is still being sent earlier ones go out as one."""
        caller = await self._caller(context)
        request_id, chunks = self._runtime_call(caller, request, _deadline(context), raw=True)
        relay = ChunkRelay(request_id)
        # aclosing: a cancelled call closes the runtime call now, not when collected.
        with metrics.ACTIVE_STREAMS.labels("Generate").track_inprogress():
            if not self.config.relay_coalesce:
                async with contextlib.aclosing(chunks):
                    async for chunk, _ in chunks:
                        out = relay(chunk)
                        if not isinstance(out, bytes):  # bytes never carry usage (relay.py)
                            metrics.annotate_usage(out)
                        yield out
                return
            async with contextlib.aclosing(coalesced(chunks)) as batches:
                async for batch in batches:
                    if len(batch) == 1:
                        out = relay(batch[0][0])
                    else:
                        out = relay.merge([chunk for chunk, _ in batch])
                    if not isinstance(out, bytes):
                        metrics.annotate_usage(out)
                    yield out

    async def generate(
        self, caller: Caller, request: Any, deadline: float | None
    ) -> AsyncIterator[Any]:
        """Generate's stream for an authorized caller (shared with the HTTP API), as protobuf
        messages; `deadline` is a time.monotonic() instant or None."""
        request_id, chunks = self._runtime_call(caller, request, deadline, raw=False)
        async with contextlib.aclosing(chunks):
            async for chunk, _ in chunks:
                out = pb.generate_chunk(request_id, chunk)
                metrics.annotate_usage(out)
                yield out

    def _runtime_call(
        self, caller: Caller, request: Any, deadline: float | None, raw: bool
    ) -> tuple[str, AsyncIterator[tuple[Any, str]]]:
        """The request id and the (not yet started) runtime stream of a Generate request."""
        check_model(self.pool.models(), request.model, request.adapter)
        request_id = check_request_id("request_id", request.request_id) or uuid.uuid4().hex
        annotate(request_id=request_id, model=request.model, adapter=request.adapter)
        if not request.prompt.WhichOneof("kind"):
            raise InvalidArgument(
                "prompt is required: set prompt.text, token_ids or chat",
                reason=Reason.FIELD_REQUIRED,
                field="prompt",
            )
        runtime_request = runtime_pb2.GenerateRequest(
            request_id=runtime_request_id(caller.owner, request_id),
            prompt=request.prompt,
            sampling=request.sampling,
            adapter=request.adapter,
            final_only=request.final_only,
        )
        return request_id, runtime_client.generate(
            self.pool,
            runtime_request,
            model=request.model,
            adapter=request.adapter,
            deadline=deadline,
            max_attempts=self.config.max_route_attempts,
            idle_timeout_s=self.config.runtime_idle_timeout_s,
            raw=raw,
        )

    async def Chat(self, request: Any, context: Any) -> AsyncIterator[Any]:
        caller = await self._caller(context)
        stream = self.chat(caller, request, _deadline(context))
        with metrics.ACTIVE_STREAMS.labels("Chat").track_inprogress():
            async with contextlib.aclosing(stream) as stream:
                async for chunk in stream:
                    yield chunk

    async def chat(
        self, caller: Caller, request: Any, deadline: float | None
    ) -> AsyncIterator[Any]:
        """Chat's stream for an authorized caller (shared with the HTTP API)."""
        annotate(session_id=request.session_id, request_id=request.request_id)
        message = self._check_text("message", request.message, required=True)
        request_id = check_request_id("request_id", request.request_id)
        started = await self.sessions.begin_turn(caller.owner, request.session_id, request_id)
        if isinstance(started, Reply):
            yield pb.chat_replay(request.session_id, started)
            return
        turn = started
        stored = False
        renewer = asyncio.create_task(self._keep_lock(turn))
        try:
            async for chunk in self._chat_turn(turn, message, request.sampling, deadline):
                if chunk.finish_reason:
                    stored = True  # _chat_turn yields the last chunk once the turn is stored
                yield chunk
        finally:
            renewer.cancel()
            if not stored:
                await self._release(turn)

    async def _chat_turn(
        self, turn: Turn, message: str, sampling: Any, deadline: float | None
    ) -> AsyncIterator[Any]:
        session = turn.session
        user = Message("user", message, 0, now_ms())
        runtime_request = runtime_pb2.GenerateRequest(
            request_id=runtime_request_id(
                session.owner, turn.request_id or f"chat-{uuid.uuid4().hex}"
            ),
            prompt=pb.chat_prompt(session, message),
            sampling=sampling,
            adapter=session.adapter,
        )
        text: list[str] = []
        token_ids: list[int] = []
        last: tuple[Any, str] | None = None
        try:
            async for chunk, address in runtime_client.generate(
                self.pool,
                runtime_request,
                model=session.model,
                adapter=session.adapter,
                pinned=session.runtime,
                deadline=deadline,
                max_attempts=self.config.max_route_attempts,
                idle_timeout_s=self.config.runtime_idle_timeout_s,
            ):
                text.append(chunk.text)
                token_ids.extend(chunk.token_ids)
                metrics.annotate_usage(chunk)
                if chunk.finish_reason:
                    last = (chunk, address)  # held back until the turn is stored
                else:
                    yield pb.chat_chunk(session.session_id, chunk)
            if last is None:
                raise Unavailable(
                    "the runtime ended the reply without a finish reason",
                    reason=Reason.RUNTIME_FAILED,
                )
            if last[0].finish_reason == common_pb2.FINISH_REASON_ABORT:
                raise runtime_client.reply_aborted()
        except LLMServeError as e:
            raise e.with_message(f"{e.message}; the session is unchanged") from e
        chunk, address = last
        reply = pb.reply_of("".join(text), token_ids, chunk)
        assistant = Message("assistant", reply.text, reply.usage.completion_tokens, now_ms())
        try:
            await self._retrying(
                lambda: self.sessions.commit_turn(turn, user, assistant, reply, address)
            )
            metrics.SESSIONS.labels("turn_committed").inc()
        except Unavailable as e:
            retry = (
                "a retry with the same request_id never stores it twice"
                if turn.request_id
                else "set request_id to make such retries safe"
            )
            raise Unavailable(
                f"{e.message}. The reply was generated but could not be stored; GetSession shows"
                f" whether the turn is in the session; {retry}",
                reason=e.reason,
            ) from e
        yield pb.chat_chunk(session.session_id, chunk)

    async def _keep_lock(self, turn: Turn) -> None:
        """Renews the turn's busy lock while the reply streams."""
        interval = self.sessions.lock_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.sessions.renew(turn):
                    log.warning("session %s: turn lock lost", turn.session.session_id)
                    return
            except LLMServeError as e:
                log.warning("session %s: lock not renewed: %s", turn.session.session_id, e)

    async def _retrying(self, step: Callable[[], Awaitable[T]]) -> T:
        """`step()`, tried again with backoff while Redis is Unavailable (down, or every pooled
        connection busy), for up to session_lock_ttl_s: the turn's lock lives that long, and
        both steps retried here (commit, release) are idempotent."""
        deadline = time.monotonic() + self.config.session_lock_ttl_s
        delay = 0.05
        while True:
            try:
                return await step()
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)

    async def _release(self, turn: Turn) -> None:
        """Drops the lock of a turn that stored nothing (even while the call is cancelled),
        retrying while Redis is unavailable; if it stays so, the lock expires by itself after
        session_lock_ttl_s."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self._retrying(lambda: self.sessions.release(turn)))
