"""The gateway's stream of chunks (GatewayGenerateResponse or ChatResponse: text, token ids,
logprobs, and a finish reason and usage on the last) as OpenAI's objects: a whole chat
completion or completion, or their server-sent events.

A chat stream starts with a delta carrying the role, then one delta per chunk; the last has
the finish reason. With `stream_options.include_usage`, one more chunk follows with no choices
and the usage, as OpenAI sends it. Every stream ends with `data: [DONE]`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.openai import convert
from gateway.openai.replies import DONE, sse
from gateway.openai.responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
)
from gateway.runtime_client import reply_aborted
from llmserve.errors import Unavailable
from llmserve.reasons import Reason


@dataclass(frozen=True, slots=True)
class ReplyInfo:
    """What every object of one reply repeats."""

    id: str
    model: str
    created: int
    logprobs: bool = False  # whether the request asked for logprobs
    include_usage: bool = False


async def checked(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """`chunks`, ending with Unavailable when the runtime aborted the reply (draining)."""
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            if convert.is_abort(chunk):
                raise reply_aborted()
            yield chunk


@dataclass(slots=True)
class _Collected:
    text: list[str] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    last: Any = None


async def _collect(chunks: AsyncIterator[Any]) -> _Collected:
    out = _Collected()
    async for chunk in checked(chunks):
        out.text.append(chunk.text)
        out.logprobs.extend(chunk.logprobs)
        out.last = chunk
    if out.last is None or not out.last.finish_reason:
        raise Unavailable(
            "the runtime ended the reply without a finish reason", reason=Reason.RUNTIME_FAILED
        )
    return out


async def chat_completion(chunks: AsyncIterator[Any], info: ReplyInfo) -> ChatCompletion:
    out = await _collect(chunks)
    logprobs = (
        ChoiceLogprobs(content=convert.chat_logprobs(out.logprobs)) if info.logprobs else None
    )
    choice = ChatChoice(
        message=AssistantMessage(content="".join(out.text)),
        logprobs=logprobs,
        finish_reason=convert.FINISH_REASONS[out.last.finish_reason],
    )
    return ChatCompletion(
        id=info.id,
        created=info.created,
        model=info.model,
        choices=[choice],
        usage=convert.usage(out.last.usage),
    )


async def chat_events(chunks: AsyncIterator[Any], info: ReplyInfo) -> AsyncIterator[bytes]:
    def event(choices: list[ChatChunkChoice], usage: Any = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=info.id, created=info.created, model=info.model, choices=choices, usage=usage
        )
        return sse(chunk.model_dump_json().encode())

    first = True
    async for chunk in checked(chunks):
        if first:  # after the first token arrived, so that earlier failures are HTTP errors
            yield event([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
            first = False
        finish = convert.FINISH_REASONS.get(chunk.finish_reason)
        logprobs = None
        if info.logprobs and chunk.logprobs:
            logprobs = ChoiceLogprobs(content=convert.chat_logprobs(chunk.logprobs))
        if chunk.text or logprobs or finish:
            delta = ChatDelta(content=chunk.text or None)
            yield event([ChatChunkChoice(delta=delta, logprobs=logprobs, finish_reason=finish)])
        if finish and info.include_usage:
            yield event([], convert.usage(chunk.usage))
    yield DONE


async def completion(chunks: AsyncIterator[Any], info: ReplyInfo) -> Completion:
    out = await _collect(chunks)
    choice = CompletionChoice(
        text="".join(out.text),
        logprobs=convert.completion_logprobs(out.logprobs) if info.logprobs else None,
        finish_reason=convert.FINISH_REASONS[out.last.finish_reason],
    )
    return Completion(
        id=info.id,
        created=info.created,
        model=info.model,
        choices=[choice],
        usage=convert.usage(out.last.usage),
    )


async def completion_events(chunks: AsyncIterator[Any], info: ReplyInfo) -> AsyncIterator[bytes]:
    def event(choices: list[CompletionChoice], usage: Any = None) -> bytes:
        chunk = Completion(
            id=info.id, created=info.created, model=info.model, choices=choices, usage=usage
        )
        return sse(chunk.model_dump_json().encode())

    offset = 0
    async for chunk in checked(chunks):
        finish = convert.FINISH_REASONS.get(chunk.finish_reason)
        logprobs = None
        if info.logprobs:
            logprobs = convert.completion_logprobs(chunk.logprobs, offset)
        offset += len(chunk.text)
        if chunk.text or finish or chunk.logprobs:
            yield event(
                [CompletionChoice(text=chunk.text, logprobs=logprobs, finish_reason=finish)]
            )
        if finish and info.include_usage:
            yield event([], convert.usage(chunk.usage))
    yield DONE
