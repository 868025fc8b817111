"""The OpenAI-compatible endpoints, each a door onto the gRPC servicer's own methods.

Every call: `Authorization: Bearer <key>` → caller and rate limit (GatewayServicer.authorize),
then the body validated by pydantic, then the model name resolved (`<model>` or
`<model>:<adapter>`), then the servicer's `generate` (stateless) or `chat` (a session turn).
Routing, retries before the first token, the deadline and cancellation are the servicer's.

Headers llmserve reads (besides Authorization):
- `X-Request-Id`: the request id (at most 128 characters; default a random one), sent on to the
  runtime and returned; in a session it makes a retried turn replay instead of running twice.
- `X-Request-Timeout`: seconds the caller will wait, the call's deadline (gRPC's deadline).
- `X-Session-Id` (chat only): the turn goes to this gateway session, in Redis, and the
  conversation can continue over gRPC's Chat. The request's last message is the turn (a user
  message); the session holds the ones before it, so earlier messages in the request are not
  used. `X-Session-Id: new` creates a session of the requested model, with the request's leading
  system messages as its system prompt; the reply's `X-Session-Id` header names it.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import Caller
from gateway.openai import convert, formats
from gateway.openai.replies import Reply, Send, send_events, send_json
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest, refuse
from gateway.openai.responses import ModelCard, ModelList
from gateway.service import GatewayServicer

NEW_SESSION = "new"


def _metadata(request: Request) -> list[tuple[str, str]]:
    return list(request.headers.items())


def _peer(request: Request) -> str:
    """The client's address (failed authentications are limited per address)."""
    return request.client.host if request.client else ""


def _deadline(request: Request) -> float | None:
    """The X-Request-Timeout header as a time.monotonic() instant."""
    raw = request.headers.get("x-request-timeout")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < 1e8:
        refuse("X-Request-Timeout", f"X-Request-Timeout must be seconds > 0, got {raw!r}")
    return time.monotonic() + seconds


class OpenAIRoutes:
    """GET /v1/models, POST /v1/chat/completions, POST /v1/completions."""

    def __init__(self, servicer: GatewayServicer) -> None:
        self.servicer = servicer

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]

    async def models(self, request: Request) -> Reply:
        async def produce(send: Send) -> None:
            await self.servicer.authorize(_metadata(request), _peer(request))
            cards = []
            for m in self.servicer.pool.models():
                sizes = {"max_model_len": m.max_model_len}
                sizes["num_healthy_runtimes"] = m.num_healthy_runtimes
                cards.append(ModelCard(id=m.name, **sizes))
                cards += [ModelCard(id=f"{m.name}:{a}", parent=m.name, **sizes) for a in m.adapters]
            await send_json(send, 200, ModelList(data=cards).model_dump_json().encode())

        return Reply(request, produce)

    async def chat_completions(self, request: Request) -> Reply:
        async def produce(send: Send) -> None:
            caller = await self.servicer.authorize(_metadata(request), _peer(request))
            body = ChatCompletionRequest.model_validate_json(await request.body())
            model, adapter = convert.resolve_model(self.servicer.pool.models(), body.model)
            given_id = request.headers.get("x-request-id", "")
            request_id = given_id or uuid.uuid4().hex
            deadline = _deadline(request)
            headers = {"x-request-id": request_id}
            session_id = request.headers.get("x-session-id")
            chunks: AsyncIterator[Any]
            if session_id:
                session_id = await self._session(caller, body, model, adapter, session_id)
                # Only a client's own id makes a retried turn replay (as over gRPC).
                turn = convert.session_chat_request(body, session_id, given_id)
                chunks = self.servicer.chat(caller, turn, deadline)
                headers["x-session-id"] = session_id
            else:
                call = convert.chat_generate_request(body, model, adapter, request_id)
                chunks = self.servicer.generate(caller, call, deadline)
            info = formats.ReplyInfo(
                id=f"chatcmpl-{request_id}",
                model=body.model,
                created=int(time.time()),
                logprobs=body.logprobs,
                include_usage=body.include_usage,
            )
            if body.stream:
                await send_events(send, formats.chat_events(chunks, info), headers)
            else:
                reply = await formats.chat_completion(chunks, info)
                await send_json(send, 200, reply.model_dump_json().encode(), headers)

        return Reply(request, produce)

    async def _session(
        self, caller: Caller, body: ChatCompletionRequest, model: str, adapter: str, session_id: str
    ) -> str:
        """The id of the session the turn goes to: created for `new`, else checked to be of
        the requested model."""
        if session_id == NEW_SESSION:
            create = convert.new_session_request(body, model, adapter)
            return (await self.servicer.create_session(caller, create)).session_id
        session = await self.servicer.sessions.get(caller.owner, session_id)
        if (session.model, session.adapter) != (model, adapter):
            named = session.model + (f":{session.adapter}" if session.adapter else "")
            refuse("model", f"session {session_id} is of model {named!r}, not {body.model!r}")
        return session_id

    async def completions(self, request: Request) -> Reply:
        async def produce(send: Send) -> None:
            caller = await self.servicer.authorize(_metadata(request), _peer(request))
            body = CompletionRequest.model_validate_json(await request.body())
            model, adapter = convert.resolve_model(self.servicer.pool.models(), body.model)
            request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
            call = convert.completion_generate_request(body, model, adapter, request_id)
            chunks = self.servicer.generate(caller, call, _deadline(request))
            info = formats.ReplyInfo(
                id=f"cmpl-{request_id}",
                model=body.model,
                created=int(time.time()),
                logprobs=body.logprobs is not None,
                include_usage=body.include_usage,
            )
            headers = {"x-request-id": request_id}
            if body.stream:
                await send_events(send, formats.completion_events(chunks, info), headers)
            else:
                reply = await formats.completion(chunks, info)
                await send_json(send, 200, reply.model_dump_json().encode(), headers)

        return Reply(request, produce)
