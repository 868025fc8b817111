"""Request: one generation's tokens, progress and state inside the engine.

NOTE: the engine's one rule: each step moves a scheduled request's `num_computed_tokens`
toward `num_tokens` (prompt plus output so far). When the two meet, the step samples a new
token, so `num_tokens` grows by one and the next step computes it. Prefill, chunked prefill,
decode, prefix-cache hits and recompute after preemption are all this rule.

With async scheduling the sampled token is first a placeholder (PLACEHOLDER, at most one per
request): the next step is scheduled and launched with it (its input id is taken on the device
from the step that samples it), and `resolve_placeholder` writes the real id once it reaches
the host. Only `num_known_tokens` may be hashed into the prefix cache.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from runtime_service.engine.params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # blocks reclaimed; waiting to be recomputed
    FINISHED_STOPPED = "stop"  # EOS, stop token or stop string
    FINISHED_LENGTH = "length"  # max_tokens or the context window
    FINISHED_ABORTED = "abort"

    def __init__(self, value: str) -> None:
        # A plain attribute: read several times per request per step.
        self.finished = value in ("stop", "length", "abort")


@dataclass(slots=True)
class TokenLogprobs:
    """Log-probabilities at one generated position (raw model distribution)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), most likely first


@dataclass(slots=True)
class RequestTimes:
    """Monotonic times (seconds) of a request's milestones."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


@dataclass(slots=True)
class EngineRequest:
    """A validated, tokenized request as the frontend hands it to the engine core (it crosses
    a process boundary: plain data only)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: tuple[int, ...]
    adapter: str | None = None
    arrival: float = field(default_factory=time.monotonic)


PLACEHOLDER = -1  # an output token sampled on the device, not yet on the host


class Request:
    """A request's prompt, outputs and engine-side state."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        eos_token_ids: tuple[int, ...],
        max_model_len: int,
        adapter: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.adapter = adapter
        # Content digest of the adapter, set when the engine binds the request to it.
        self.adapter_digest: str | None = None
        self.status = RequestStatus.WAITING
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_pending = 0  # trailing placeholder tokens (0 or 1)
        self.sample_row = -1  # its row in the latest step's sampled tokens
        # Prompt tokens found in the prefix cache when first scheduled (-1: not yet scheduled).
        self.num_cached_tokens = -1
        self.num_preemptions = 0
        # Hashes of the full blocks of all_token_ids, filled by the block manager.
        self.block_hashes: list[bytes] = []
        self.stop_tokens = set(params.stop_token_ids)
        if not params.ignore_eos:
            self.stop_tokens.update(eos_token_ids)
        room = max_model_len - len(prompt_token_ids)
        self.max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        self.logprobs: list[TokenLogprobs] = []
        self.stop_reason: str | int | None = None
        self.times = RequestTimes()
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_known_tokens(self) -> int:
        """Tokens whose ids the host knows (all but a trailing placeholder)."""
        return len(self.all_token_ids) - self.num_pending

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def cache_key(self) -> str | None:
        """What besides its tokens names this request's KV blocks in the prefix cache: the
        adapter by name and content, so an adapter reloaded with other weights under the same
        name cannot reuse stale KV."""
        return None if self.adapter is None else f"{self.adapter}@{self.adapter_digest}"

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_output_token(self, token_id: int, logprobs: TokenLogprobs | None) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
        if logprobs is not None:
            self.logprobs.append(logprobs)
        if self.times.first_token is None:
            self.times.first_token = time.monotonic()

    def append_placeholder(self, sample_row: int) -> None:
        """The token sampled at `sample_row` of the step just launched, until it is known."""
        assert self.num_pending == 0, "one placeholder at a time"
        self.output_token_ids.append(PLACEHOLDER)
        self.all_token_ids.append(PLACEHOLDER)
        self.num_pending = 1
        self.sample_row = sample_row

    def resolve_placeholder(self, token_id: int, logprobs: TokenLogprobs | None) -> None:
        """Writes the real id of the trailing placeholder."""
        assert self.num_pending == 1
        self.output_token_ids[-1] = token_id
        self.all_token_ids[-1] = token_id
        self.num_pending = 0
        if logprobs is not None:
            self.logprobs.append(logprobs)
        if self.times.first_token is None:
            self.times.first_token = time.monotonic()

    def check_token_stop(self) -> RequestStatus | None:
        """The finished status the last token causes (EOS/stop token/length), if any."""
        last = self.output_token_ids[-1]
        if self.num_output_tokens >= self.params.min_tokens and last in self.stop_tokens:
            self.stop_reason = last
            return RequestStatus.FINISHED_STOPPED
        if self.num_output_tokens >= self.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, {self.status.value}, "
            f"computed={self.num_computed_tokens}/{self.num_tokens})"
        )
