"""Protobuf at the HTTP API's edge: OpenAI requests → the gateway's own llmserve.v1 requests,
and the gateway's stream messages → OpenAI's logprobs, usage and finish reasons.

The HTTP API is a second door onto the gRPC servicer, not a second gateway: a request becomes
the GatewayGenerateRequest (or, with a session, ChatRequest) a gRPC client would send.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.openai.requests import (
    ChatCompletionRequest,
    ChatMessageParam,
    CompletionRequest,
    SamplingFields,
    refuse,
)
from gateway.openai.responses import (
    CompletionLogprobs,
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from gateway.routing import ModelInfo
from gateway.validation import check_model
from llmserve.errors import NotFound
from llmserve.v1 import common_pb2, gateway_pb2

FINISH_REASONS = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
}


def resolve_model(models: Sequence[ModelInfo], name: str) -> tuple[str, str]:
    """(model, adapter) named by `name`: a served model's name, or `<model>:<adapter>` for a
    LoRA adapter loaded on a runtime of that model. NotFound names what is served."""
    if any(m.name == name for m in models) or ":" not in name:
        return check_model(models, name).name, ""
    base, _, adapter = name.rpartition(":")
    try:
        check_model(models, base, adapter)
    except NotFound as e:
        raise e.with_message(f"model {name!r}: {e.message}") from e
    return base, adapter


def sampling_pb(
    req: SamplingFields, max_tokens: int | None, logprobs: int | None
) -> common_pb2.SamplingParams:
    """llmserve's SamplingParams of the OpenAI fields; an unset field keeps llmserve's default
    (temperature 1, top_p 1, as OpenAI's)."""
    params = common_pb2.SamplingParams(
        stop=req.stop_strings,
        stop_token_ids=req.stop_token_ids or [],
        ignore_eos=req.ignore_eos,
        **req.constraint_fields(),
    )
    optional = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": None if req.top_k is None else max(req.top_k, 0),  # vLLM's -1 is llmserve's 0
        "min_p": req.min_p,
        "repetition_penalty": req.repetition_penalty,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "seed": req.seed,
        "max_tokens": max_tokens,
        "min_tokens": req.min_tokens,
        "logprobs": logprobs,
        "skip_special_tokens": req.skip_special_tokens,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(params, name, value)
    return params


def _role(message: ChatMessageParam) -> str:
    return "system" if message.role == "developer" else message.role


def chat_generate_request(
    req: ChatCompletionRequest, model: str, adapter: str, request_id: str
) -> gateway_pb2.GatewayGenerateRequest:
    messages = [common_pb2.ChatMessage(role=_role(m), content=m.text) for m in req.messages]
    return gateway_pb2.GatewayGenerateRequest(
        request_id=request_id,
        model=model,
        adapter=adapter,
        prompt=common_pb2.Prompt(chat=common_pb2.ChatPrompt(messages=messages)),
        sampling=sampling_pb(req, req.output_limit, req.num_logprobs),
        final_only=not req.stream,
    )


def completion_generate_request(
    req: CompletionRequest, model: str, adapter: str, request_id: str
) -> gateway_pb2.GatewayGenerateRequest:
    prompt = req.single_prompt
    if isinstance(prompt, str):
        prompt_pb = common_pb2.Prompt(text=prompt)
    else:
        prompt_pb = common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=prompt))
    return gateway_pb2.GatewayGenerateRequest(
        request_id=request_id,
        model=model,
        adapter=adapter,
        prompt=prompt_pb,
        sampling=sampling_pb(req, req.max_tokens, req.logprobs),
        final_only=not req.stream,
    )


def session_chat_request(
    req: ChatCompletionRequest, session_id: str, request_id: str
) -> gateway_pb2.ChatRequest:
    """The turn of a session: the last message, which must be the user's (the session holds
    the conversation before it)."""
    last = req.messages[-1]
    if last.role != "user":
        refuse(
            "messages",
            f"with X-Session-Id the last message must be the user's new turn, got role"
            f" {last.role!r}",
        )
    return gateway_pb2.ChatRequest(
        session_id=session_id,
        message=last.text,
        request_id=request_id,
        sampling=sampling_pb(req, req.output_limit, req.num_logprobs),
    )


def new_session_request(
    req: ChatCompletionRequest, model: str, adapter: str
) -> gateway_pb2.CreateSessionRequest:
    """CreateSession for `X-Session-Id: new`: the model, and the leading system messages as
    the system prompt."""
    return gateway_pb2.CreateSessionRequest(
        model=model, adapter=adapter, system_prompt=system_prompt(req)
    )


def is_abort(chunk: gateway_pb2.GatewayGenerateResponse | gateway_pb2.ChatResponse) -> bool:
    """Whether the runtime aborted the reply (it was draining)."""
    return chunk.finish_reason == common_pb2.FINISH_REASON_ABORT


def system_prompt(req: ChatCompletionRequest) -> str:
    """The leading system (or developer) messages, joined: a new session's system prompt."""
    parts = []
    for m in req.messages:
        if m.role not in ("system", "developer"):
            break
        parts.append(m.text)
    return "\n\n".join(parts)


def usage(pb: common_pb2.Usage) -> Usage:
    return Usage(
        prompt_tokens=pb.prompt_tokens,
        completion_tokens=pb.completion_tokens,
        total_tokens=pb.prompt_tokens + pb.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=pb.cached_prompt_tokens),
    )


def _top(pb: common_pb2.TokenLogprob) -> TopLogprob:
    return TopLogprob(token=pb.token, logprob=pb.logprob, bytes=list(pb.token.encode()))


def chat_logprobs(pbs: Sequence[common_pb2.TokenLogprobs]) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            token=p.sampled.token,
            logprob=p.sampled.logprob,
            bytes=list(p.sampled.token.encode()),
            top_logprobs=[_top(t) for t in p.top],
        )
        for p in pbs
    ]


def completion_logprobs(
    pbs: Sequence[common_pb2.TokenLogprobs], text_offset: int = 0
) -> CompletionLogprobs:
    """The legacy parallel lists; `text_offset` is where these tokens start in the text."""
    offsets, position = [], text_offset
    for p in pbs:
        offsets.append(position)
        position += len(p.sampled.token)
    return CompletionLogprobs(
        tokens=[p.sampled.token for p in pbs],
        token_logprobs=[p.sampled.logprob for p in pbs],
        top_logprobs=[{t.token: t.logprob for t in p.top} for p in pbs],
        text_offset=offsets,
    )
