"""Protobuf <-> engine types, for the servicer only: the engine never sees protobuf."""

from __future__ import annotations

from llmserve.errors import InvalidArgument
from llmserve.reasons import Reason
from llmserve.v1 import common_pb2, runtime_pb2
from runtime_service.engine.inputs import ChatPrompt, PromptInput, TextPrompt, TokensPrompt
from runtime_service.engine.outputs import RequestOutput
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.request import TokenLogprobs
from runtime_service.engine.structured import Constraint

FINISH_REASONS = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORT,
}
MAX_REQUEST_ID_CHARS = 256  # the gateway sends <owner (<= 64)>/<its caller's id (<= 128)>


def prompt_from_pb(prompt: common_pb2.Prompt) -> PromptInput:
    kind = prompt.WhichOneof("kind")
    add_special = prompt.add_special_tokens if prompt.HasField("add_special_tokens") else True
    if kind == "text":
        return TextPrompt(prompt.text, add_special_tokens=add_special)
    if kind == "token_ids":
        return TokensPrompt(list(prompt.token_ids.ids))
    if kind == "chat":
        chat = prompt.chat
        return ChatPrompt(
            messages=[{"role": m.role, "content": m.content} for m in chat.messages],
            add_generation_prompt=(
                chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True
            ),
            truncate_history=chat.truncate_history,
        )
    raise InvalidArgument(
        "prompt must be set: text, token_ids or chat", reason=Reason.FIELD_REQUIRED, field="prompt"
    )


def sampling_from_pb(s: common_pb2.SamplingParams) -> SamplingParams:
    """Absent fields take the contract's defaults; errors name the field as sampling.<name>."""
    values: dict = {}
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "max_tokens",
        "min_tokens",
        "logprobs",
        "skip_special_tokens",
    ):
        if s.HasField(name):
            values[name] = getattr(s, name)
    try:
        return SamplingParams(
            **values,
            stop=list(s.stop),
            stop_token_ids=list(s.stop_token_ids),
            ignore_eos=s.ignore_eos,
            constraint=constraint_from_pb(s),
        )
    except InvalidArgument as e:
        field = f"sampling.{e.field}" if e.field else "sampling"
        raise InvalidArgument(f"sampling.{e.message}", reason=e.reason, field=field) from None


def constraint_from_pb(s: common_pb2.SamplingParams) -> Constraint | None:
    """The oneof `constraint` as plain data (parsed later, off the serving thread)."""
    kind = s.WhichOneof("constraint")
    if kind is None or (kind == "json_object" and not s.json_object):
        return None
    if kind == "json_object":
        return Constraint("json_object")
    if kind == "choice":
        return Constraint("choice", tuple(s.choice.values))
    return Constraint(kind, getattr(s, kind))


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(
            f"request_id must be at most {MAX_REQUEST_ID_CHARS} characters, got {len(request_id)}",
            reason=Reason.FIELD_TOO_LONG,
            field="request_id",
        )


def logprobs_to_pb(entries: list[TokenLogprobs], decode: callable) -> list:
    return [
        common_pb2.TokenLogprobs(
            sampled=common_pb2.TokenLogprob(
                token_id=e.token_id, token=decode(e.token_id), logprob=e.logprob
            ),
            top=[common_pb2.TokenLogprob(token_id=t, token=decode(t), logprob=v) for t, v in e.top],
        )
        for e in entries
    ]


def output_to_pb(out: RequestOutput, decode: callable) -> runtime_pb2.GenerateResponse:
    """One streamed chunk; the last carries finish reason, usage and timings."""
    msg = runtime_pb2.GenerateResponse(
        request_id=out.request_id,
        token_ids=out.token_ids,
        text=out.text,
        logprobs=logprobs_to_pb(out.logprobs, decode),
    )
    if out.finished:
        msg.finish_reason = FINISH_REASONS[out.finish_reason or "abort"]
        if isinstance(out.stop_reason, str):
            msg.stop_string = out.stop_reason
        elif isinstance(out.stop_reason, int):
            msg.stop_token_id = out.stop_reason
        msg.usage.CopyFrom(
            common_pb2.Usage(
                prompt_tokens=out.num_prompt_tokens,
                completion_tokens=out.num_output_tokens,
                cached_prompt_tokens=out.num_cached_tokens,
            )
        )
        if out.timings is not None:
            t = out.timings
            msg.timings.CopyFrom(
                common_pb2.Timings(
                    queue_ns=t.queue_ns,
                    prefill_ns=t.prefill_ns,
                    decode_ns=t.decode_ns,
                    total_ns=t.total_ns,
                )
            )
    return msg
