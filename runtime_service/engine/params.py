"""SamplingParams: how one request chooses its tokens, validated where it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmserve.errors import InvalidArgument
from runtime_service.engine.structured.constraint import Constraint

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_BYTES = 256
MAX_LOGPROBS = 20
# Temperatures in (0, MIN_TEMPERATURE) are taken as 0 (greedy): dividing logits by them
# overflows float32 to inf, and a softmax of infs is NaN (sampling would pick token 0).
MIN_TEMPERATURE = 1e-5


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise InvalidArgument(message, field=field)


@dataclass(slots=True)
class SamplingParams:
    """Defaults match the contract (protos/llmserve/v1/common.proto SamplingParams)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None  # None: until a stop or the context window is full
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # top-n alternatives; None: no logprobs at all
    skip_special_tokens: bool = True
    detokenize: bool = True  # False: token ids only, no text (and no stop strings)
    # What the output must match (structured/constraint.py); None: free text.
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        _check(
            self.temperature >= 0 and math.isfinite(self.temperature),
            "temperature",
            f"temperature must be a finite number >= 0, got {self.temperature}",
        )
        if self.temperature < MIN_TEMPERATURE:
            self.temperature = 0.0
        _check(0 < self.top_p <= 1, "top_p", f"top_p must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, "top_k", f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        _check(0 <= self.min_p <= 1, "min_p", f"min_p must be in [0, 1], got {self.min_p}")
        _check(
            self.repetition_penalty > 0,
            "repetition_penalty",
            f"repetition_penalty must be > 0, got {self.repetition_penalty}",
        )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(-2 <= value <= 2, name, f"{name} must be in [-2, 2], got {value}")
        _check(
            self.seed is None or 0 <= self.seed < 2**64,
            "seed",
            f"seed must be in [0, 2^64), got {self.seed}",
        )
        _check(
            self.max_tokens is None or self.max_tokens >= 1,
            "max_tokens",
            f"max_tokens must be >= 1, got {self.max_tokens}",
        )
        _check(
            self.min_tokens >= 0, "min_tokens", f"min_tokens must be >= 0, got {self.min_tokens}"
        )
        _check(
            self.max_tokens is None or self.min_tokens <= self.max_tokens,
            "min_tokens",
            f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})",
        )
        _check(
            len(self.stop) <= MAX_STOP_STRINGS,
            "stop",
            f"stop may hold at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}",
        )
        for s in self.stop:
            size = len(s.encode())
            _check(size > 0, "stop", "stop strings must not be empty")
            _check(
                size <= MAX_STOP_STRING_BYTES,
                "stop",
                f"each stop string must be at most {MAX_STOP_STRING_BYTES} bytes, got {size}",
            )
        _check(
            all(t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "stop_token_ids must be >= 0",
        )
        _check(self.detokenize or not self.stop, "stop", "stop strings need detokenize")
        _check(
            self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
            "logprobs",
            f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}",
        )
        if self.constraint is not None:
            _check(
                self.min_tokens == 0,
                "min_tokens",
                f"min_tokens ({self.min_tokens}) cannot be combined with "
                f"{self.constraint.kind}: the constraint decides where the output ends",
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )
