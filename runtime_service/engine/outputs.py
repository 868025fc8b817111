"""What the engine hands back: per-step deltas (RequestOutput) and finished Completions."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime_service.engine.request import RequestTimes, TokenLogprobs


@dataclass(slots=True)
class Timings:
    """Nanoseconds: arrival to first scheduling, to first token, to last token, in all."""

    queue_ns: int
    prefill_ns: int
    decode_ns: int
    total_ns: int

    @classmethod
    def of(cls, t: RequestTimes) -> Timings:
        scheduled = t.first_scheduled if t.first_scheduled is not None else t.arrival
        first = t.first_token if t.first_token is not None else scheduled
        end = t.finished if t.finished is not None else first

        def ns(seconds: float) -> int:
            return max(0, int(seconds * 1e9))

        return cls(
            ns(scheduled - t.arrival), ns(first - scheduled), ns(end - first), ns(end - t.arrival)
        )


@dataclass(slots=True)
class CoreOutput:
    """What the engine core reports for one request after a step: token ids, no text."""

    request_id: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs]
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_token_id: int | None = None


# NOTE: the order of CoreOutput's fields; pack_outputs and unpack_outputs follow it.
PackedCoreOutput = tuple[
    str, list[int], list[TokenLogprobs], int, int, int, bool, str | None, int | None
]


def pack_outputs(outputs: list[CoreOutput]) -> list[PackedCoreOutput]:
    """A step's outputs as plain tuples for the pipe to the frontend: pickle handles tuples of
    builtins in C, ~8x faster than slotted dataclasses (bench/frontend_stages.py)."""
    return [
        (
            o.request_id,
            o.token_ids,
            o.logprobs,
            o.num_prompt_tokens,
            o.num_output_tokens,
            o.num_cached_tokens,
            o.finished,
            o.finish_reason,
            o.stop_token_id,
        )
        for o in outputs
    ]


def unpack_outputs(rows: list[PackedCoreOutput]) -> list[CoreOutput]:
    return [CoreOutput(*row) for row in rows]


@dataclass(slots=True)
class RequestOutput:
    """What one request gained in one step (or several, once merged)."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    # Seconds before each token in token_ids: since arrival for a request's first token, since
    # the previous token for the others (measured per step, before any coalescing).
    token_latencies: list[float] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or stop token id
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    timings: Timings | None = None
    times: RequestTimes | None = None  # on the last output: when each milestone happened

    def merge(self, later: RequestOutput) -> None:
        """Appends a later delta of the same request (to coalesce for a slow reader)."""
        self.token_ids.extend(later.token_ids)
        self.token_latencies.extend(later.token_latencies)
        self.text += later.text
        self.logprobs.extend(later.logprobs)
        self.finished = later.finished
        self.finish_reason = later.finish_reason
        self.stop_reason = later.stop_reason
        self.num_output_tokens = later.num_output_tokens
        self.num_cached_tokens = later.num_cached_tokens
        self.timings = later.timings
        self.times = later.times


@dataclass(slots=True)
class Completion:
    """A finished request, as the offline API returns it."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprobs]
    finish_reason: str | None
    stop_reason: str | int | None
    num_cached_tokens: int
    timings: Timings | None
