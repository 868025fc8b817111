"""Protobuf at the gateway's edge: session records ↔ llmserve.v1 messages, and the runtime
requests the gateway builds. Nothing else in gateway/ but service.py, runtime_client.py,
runtime_pool.py, relay.py (Generate's chunks as bytes) and openai/convert.py (the HTTP API's
edge) touches protobuf."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.records import Reply, Session, Timings, Usage
from gateway.routing import ModelInfo
from llmserve.v1 import common_pb2, gateway_pb2, runtime_pb2

FINISH_NAMES = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_ABORT: "abort",
}
FINISH_VALUES = {name: value for value, name in FINISH_NAMES.items()}


def timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def session_pb(session: Session) -> gateway_pb2.Session:
    return gateway_pb2.Session(
        session_id=session.session_id,
        model=session.model,
        adapter=session.adapter,
        system_prompt=session.system_prompt,
        messages=[
            gateway_pb2.SessionMessage(
                role=m.role,
                content=m.content,
                token_count=m.token_count,
                create_time=timestamp(m.time_ms),
            )
            for m in session.messages
        ],
        create_time=timestamp(session.created_ms),
        update_time=timestamp(session.updated_ms),
        expire_time=timestamp(session.expire_ms),
        runtime=session.runtime,
    )


def chat_prompt(session: Session, user_message: str) -> common_pb2.Prompt:
    """The session's system prompt, history and the new user message, for the runtime to
    render with the model's chat template, dropping the oldest turns to fit."""
    messages = [common_pb2.ChatMessage(role="system", content=session.system_prompt)]
    if not session.system_prompt:
        messages = []
    messages += [common_pb2.ChatMessage(role=m.role, content=m.content) for m in session.messages]
    messages.append(common_pb2.ChatMessage(role="user", content=user_message))
    return common_pb2.Prompt(chat=common_pb2.ChatPrompt(messages=messages, truncate_history=True))


def usage_of(pb: common_pb2.Usage) -> Usage:
    return Usage(pb.prompt_tokens, pb.completion_tokens, pb.cached_prompt_tokens)


def timings_of(pb: common_pb2.Timings) -> Timings:
    return Timings(pb.queue_ns, pb.prefill_ns, pb.decode_ns, pb.total_ns)


def reply_of(text: str, token_ids: list[int], last: runtime_pb2.GenerateResponse) -> Reply:
    return Reply(
        text=text,
        token_ids=tuple(token_ids),
        finish_reason=FINISH_NAMES.get(last.finish_reason, "stop"),
        usage=usage_of(last.usage),
        timings=timings_of(last.timings),
    )


Streamed = TypeVar("Streamed", gateway_pb2.ChatResponse, gateway_pb2.GatewayGenerateResponse)


def _with_chunk(response: Streamed, chunk: runtime_pb2.GenerateResponse) -> Streamed:
    """`response` (a gateway stream message) carrying the runtime chunk's fields."""
    response.token_ids.extend(chunk.token_ids)
    response.text = chunk.text
    response.logprobs.extend(chunk.logprobs)
    response.finish_reason = chunk.finish_reason
    if chunk.HasField("usage"):
        response.usage.CopyFrom(chunk.usage)
    if chunk.HasField("timings"):
        response.timings.CopyFrom(chunk.timings)
    return response


def chat_chunk(session_id: str, chunk: runtime_pb2.GenerateResponse) -> gateway_pb2.ChatResponse:
    return _with_chunk(gateway_pb2.ChatResponse(session_id=session_id), chunk)


def chat_replay(session_id: str, reply: Reply) -> gateway_pb2.ChatResponse:
    """The stored reply of a completed request id, as one final chunk (without logprobs)."""
    u, t = reply.usage, reply.timings
    return gateway_pb2.ChatResponse(
        session_id=session_id,
        token_ids=reply.token_ids,
        text=reply.text,
        finish_reason=FINISH_VALUES.get(reply.finish_reason, common_pb2.FINISH_REASON_STOP),
        usage=common_pb2.Usage(
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            cached_prompt_tokens=u.cached_prompt_tokens,
        ),
        timings=common_pb2.Timings(
            queue_ns=t.queue_ns, prefill_ns=t.prefill_ns, decode_ns=t.decode_ns, total_ns=t.total_ns
        ),
        replayed=True,
    )


def generate_chunk(
    request_id: str, chunk: runtime_pb2.GenerateResponse
) -> gateway_pb2.GatewayGenerateResponse:
    return _with_chunk(gateway_pb2.GatewayGenerateResponse(request_id=request_id), chunk)


def model_pb(info: ModelInfo) -> gateway_pb2.Model:
    return gateway_pb2.Model(
        name=info.name,
        engine_ids=info.engine_ids,
        max_model_len=info.max_model_len,
        num_healthy_runtimes=info.num_healthy_runtimes,
        adapters=info.adapters,
    )
