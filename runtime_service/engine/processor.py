"""Processor: the engine's frontend half. Validates and tokenizes requests on the way in;
turns the core's token ids into text deltas, stop-string stops and timings on the way out.

It runs where the requests come from (the gRPC process), so the engine core, possibly in
another process, spends its time on the device. Thread-safe: requests are added from the
event loop while outputs are processed on a receiver thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from llmserve.errors import InvalidArgument
from llmserve.reasons import Reason
from runtime_service.engine.core import CoreInfo
from runtime_service.engine.detokenizer import Detokenizer
from runtime_service.engine.inputs import InputProcessor, PromptInput
from runtime_service.engine.outputs import CoreOutput, RequestOutput, Timings
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.request import EngineRequest, RequestTimes


class _Tracked:
    __slots__ = ("detokenizer", "last_token", "times")

    def __init__(self, detokenizer: Detokenizer, times: RequestTimes) -> None:
        self.detokenizer = detokenizer
        self.times = times
        self.last_token = times.arrival  # time of the latest token (arrival before the first)


class Processor:
    def __init__(self, tokenizer: Any, info: CoreInfo) -> None:
        self.tokenizer = tokenizer
        self.info = info
        self.inputs = InputProcessor(tokenizer, info.vocab_size, info.max_model_len)
        eos = set(info.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = tuple(sorted(eos))
        self._tracked: dict[str, _Tracked] = {}
        self._lock = threading.Lock()

    # In.
    def make_request(
        self,
        request_id: str,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        adapter: str | None = None,
    ) -> EngineRequest:
        """Validates and tokenizes, raising InvalidArgument on bad input; changes nothing."""
        params = params or SamplingParams()
        vocab_size = self.info.vocab_size
        for t in params.stop_token_ids:
            if t >= vocab_size:
                raise InvalidArgument(
                    f"stop_token_ids contains {t}, outside the vocabulary [0, {vocab_size})",
                    field="sampling.stop_token_ids",
                )
        if params.constraint is not None:
            try:  # parses the schema/regex/grammar: bad ones are refused before any compute
                params.constraint.check()
            except InvalidArgument as e:
                raise InvalidArgument(
                    f"sampling.{e.message}",
                    reason=Reason.INVALID_FIELD,
                    field=f"sampling.{params.constraint.kind}",
                ) from None
        prompt_ids = self.inputs(prompt, params.max_tokens)
        return EngineRequest(request_id, prompt_ids, params, self.eos_token_ids, adapter)

    def begin(self, er: EngineRequest) -> None:
        p = er.params
        detokenizer = Detokenizer(
            self.tokenizer._tokenizer,
            er.prompt_token_ids,
            p.skip_special_tokens,
            p.stop,
            p.detokenize,
        )
        with self._lock:
            self._tracked[er.request_id] = _Tracked(detokenizer, RequestTimes(arrival=er.arrival))

    def forget(self, request_id: str) -> None:
        """Stops tracking a request the caller gave up on (its abort is on the way)."""
        with self._lock:
            self._tracked.pop(request_id, None)

    def mark_scheduled(self, scheduled: list[tuple[str, float]]) -> None:
        """Records when each request's first step was scheduled: the core's time, taken as
        the step started (monotonic clocks agree across processes of one machine), not when
        its results came back, which would count the prefill as queueing."""
        with self._lock:
            for rid, at in scheduled:
                tracked = self._tracked.get(rid)
                if tracked is not None and tracked.times.first_scheduled is None:
                    tracked.times.first_scheduled = at

    def num_unscheduled(self) -> int:
        with self._lock:
            return sum(1 for t in self._tracked.values() if t.times.first_scheduled is None)

    # Out.
    def process(self, outputs: list[CoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Text deltas for the core's outputs, and the ids the core must abort because a stop
        string ended them here. Outputs of requests no longer tracked are dropped."""
        results: list[RequestOutput] = []
        stopped: list[str] = []
        now = time.monotonic()
        with self._lock:
            for out in outputs:
                tracked = self._tracked.get(out.request_id)
                if tracked is None:
                    continue
                detok, times = tracked.detokenizer, tracked.times
                latencies = []
                if out.token_ids:
                    if times.first_token is None:
                        times.first_token = now
                        times.first_scheduled = times.first_scheduled or now
                    latencies = [now - tracked.last_token] + [0.0] * (len(out.token_ids) - 1)
                    tracked.last_token = now
                stop = None
                for token in out.token_ids:
                    stop = detok.push(token)
                result = RequestOutput(
                    request_id=out.request_id,
                    token_ids=out.token_ids,
                    token_latencies=latencies,
                    logprobs=out.logprobs,
                    num_prompt_tokens=out.num_prompt_tokens,
                    num_output_tokens=out.num_output_tokens,
                    num_cached_tokens=out.num_cached_tokens,
                )
                if stop is not None or out.finished:
                    if stop is not None:
                        stopped.append(out.request_id)
                        result.finish_reason, result.stop_reason = "stop", stop
                    else:
                        if out.finish_reason != "abort":
                            detok.flush()
                        result.finish_reason, result.stop_reason = (
                            out.finish_reason,
                            out.stop_token_id,
                        )
                    result.finished = True
                    times.finished = now
                    result.times, result.timings = times, Timings.of(times)
                    del self._tracked[out.request_id]
                result.text = detok.take_delta(result.finished)
                results.append(result)
        return results, stopped
