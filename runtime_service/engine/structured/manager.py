"""StructuredOutput: the engine core's side of constraints.

- `add(req)` starts compiling the request's constraint (compiler.py) and holds the request;
  `take_ready()` hands it to the scheduler once its grammar is compiled, with a fresh
  GrammarMatcher. Requests without a constraint never wait here, so a slow schema stalls only
  the requests that use it.
- `mask(logits, reqs)` is the sampler's hook: one bitmask fill for the batch's constrained
  rows (xgrammar's batch filler, on the host, while the device runs the forward: with async
  scheduling the core queues the forward first, docs/structured_output.md), one copy to the
  device and one `apply_token_bitmask_inplace` on the logits.
- `start_accept(reqs, tokens)` advances the requests' matchers; the core finishes a request
  when its matcher has terminated (an accepting state and one of the request's stop tokens)
  or cannot go on. A matcher takes ~15-40 µs a token (more than a mask fill), so a large
  batch's accepts run in chunks on worker threads (xgrammar drops the GIL in
  `batch_accept_token`): `start_accept` sets them going before the core's per-row work of
  the step and `finish` collects them after it (H200 host, 256 rows: 9.6 ms a step in one
  call, 3.5 ms over 8 threads).
- `host_seconds` adds up the host time of fills and accepts (bench/structured_speed.py).

NOTE: a matcher has accepted exactly the request's output tokens. Preemption recomputes the KV
of tokens the request already has and keeps them, so the matcher stays valid; `_sync` rolls it
back or replays tokens should the two ever differ (a rebuild as the last resort).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime_service.engine.request import Request
from runtime_service.engine.structured.compiler import GrammarCache

log = logging.getLogger(__name__)
# How long an idle core waits on a compiling grammar before it looks at its inbox again.
IDLE_WAIT_S = 0.05
# Accepts go to worker threads only from this many constrained rows (each chunk at least
# half of it): below, one thread's loop is cheaper than the hand-off.
PARALLEL_ACCEPT_ROWS = 32


@dataclass(slots=True)
class _State:
    compiled: Any
    matcher: Any
    stop_token_ids: list[int]  # where the grammar may end: the request's stop tokens
    num_accepted: int = 0


class StructuredOutput:
    def __init__(
        self,
        tokenizer_path: Path | str,
        vocab_size: int,
        stop_token_ids: tuple[int, ...],
        max_num_seqs: int,
        device: torch.device,
    ) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.cache = GrammarCache(tokenizer_path, vocab_size, stop_token_ids)
        self._pending: dict[str, tuple[Request, concurrent.futures.Future, list[int]]] = {}
        self._states: dict[str, _State] = {}
        self._max_rows = max_num_seqs
        self._host_mask: torch.Tensor | None = None
        self._device_mask: torch.Tensor | None = None
        self._batch: Any = None
        # Host threads for fills and accepts: half the cores (xgrammar's "auto") beside a
        # GPU; two on a CPU engine, whose cores run the model too.
        self._threads = max(1, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 2
        self._accept_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.host_seconds = {"fill": 0.0, "accept": 0.0}

    # Admission.
    @property
    def num_pending(self) -> int:
        return len(self._pending)

    @property
    def num_active(self) -> int:
        """Constrained requests admitted to the scheduler and not yet finished."""
        return len(self._states)

    def add(self, req: Request, eos_token_ids: tuple[int, ...]) -> None:
        """Holds `req` until its grammar is compiled. Its matcher ends the grammar only at the
        request's real stop tokens: its EOS ids (config and tokenizer, also with ignore_eos)
        and its stop_token_ids."""
        assert req.params.constraint is not None
        stops = set(eos_token_ids) | set(req.params.stop_token_ids)
        stop_ids = sorted(t for t in stops if 0 <= t < self.vocab_size)
        future = self.cache.submit(req.params.constraint)
        self._pending[req.request_id] = (req, future, stop_ids)

    def any_in(self, reqs: list[Request]) -> bool:
        """Whether any of `reqs` is constrained (and still running)."""
        states = self._states
        return bool(states) and any(r.request_id in states for r in reqs)

    def take_ready(self) -> tuple[list[Request], list[Request]]:
        """(requests whose grammar is compiled, now with a matcher; requests whose grammar
        failed to compile), in arrival order."""
        ready, failed = [], []
        for rid, (req, future, stop_ids) in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[rid]
            error = future.exception()
            if error is not None:
                log.error("request %s: constraint failed to compile: %s", rid, error)
                failed.append(req)
                continue
            compiled = future.result()
            self._states[rid] = _State(compiled, self._new_matcher(compiled, stop_ids), stop_ids)
            ready.append(req)
        return ready, failed

    def wait(self, timeout: float = IDLE_WAIT_S) -> None:
        """Blocks until a pending grammar is compiled or the timeout passes."""
        futures = [f for _, f, _ in self._pending.values()]
        if futures:
            concurrent.futures.wait(
                futures, timeout, return_when=concurrent.futures.FIRST_COMPLETED
            )

    def drop(self, request_id: str) -> None:
        """Forgets a finished or aborted request."""
        self._pending.pop(request_id, None)
        self._states.pop(request_id, None)

    def is_pending(self, request_id: str) -> bool:
        return request_id in self._pending

    # The step.
    def mask(self, logits: torch.Tensor, reqs: list[Request]) -> None:
        """Sets the logits of tokens each constrained row's grammar forbids to -inf, in place;
        rows of other requests are left as they are."""
        rows, matchers = [], []
        for row, req in enumerate(reqs):
            state = self._states.get(req.request_id)
            if state is not None and not req.is_finished:
                self._sync(req, state)
                rows.append(row)
                matchers.append(state.matcher)
        if not rows:
            return
        import xgrammar as xgr

        start = time.perf_counter()
        host, device_mask = self._buffers(len(reqs))
        # NOTE: the host buffer is reused next step; the copy below has finished by then:
        # the next fill comes after the host has waited for this step's tokens, which the
        # device copies after it.
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(host, rows[0])
        else:
            self._batch.batch_fill_next_token_bitmask(matchers, host, rows)
        self.host_seconds["fill"] += time.perf_counter() - start
        n = max(rows) + 1
        if device_mask is not host:
            device_mask[:n].copy_(host[:n], non_blocking=True)
        every_row = len(rows) == len(reqs)  # then no row list to copy to the device
        xgr.apply_token_bitmask_inplace(
            logits,
            device_mask[:n],
            vocab_size=min(logits.shape[1], self.vocab_size),
            indices=None if every_row else rows,
        )

    def start_accept(self, reqs: list[Request], tokens: list[int]) -> _Accepting | None:
        """Starts advancing the matchers of `reqs` still running by their new tokens; None
        when no row is constrained. A large batch's accepts run on worker threads (xgrammar
        drops the GIL), so the core's own per-row work of the step overlaps them; `finish`
        waits for them."""
        if not self._states:  # no constrained request running: every step of a free batch
            return None
        rows, states, accepted = [], [], []
        for i, (req, token) in enumerate(zip(reqs, tokens, strict=True)):
            state = self._states.get(req.request_id)
            if state is not None and not req.is_finished:
                rows.append(i)
                states.append(state)
                accepted.append(token)
        if not rows:
            return None
        start = time.perf_counter()
        matchers = [s.matcher for s in states]
        n = len(rows)
        chunks = min(self._threads, n // (PARALLEL_ACCEPT_ROWS // 2))
        if chunks <= 1:
            fits = accept_all(matchers, accepted)
            return _Accepting(self.host_seconds, reqs, rows, states, accepted, start, fits)
        if self._accept_pool is None:
            self._accept_pool = concurrent.futures.ThreadPoolExecutor(
                self._threads, thread_name_prefix="grammar-accept"
            )
        size = -(-n // chunks)
        futures = [
            self._accept_pool.submit(accept_all, matchers[i : i + size], accepted[i : i + size])
            for i in range(0, n, size)
        ]
        return _Accepting(self.host_seconds, reqs, rows, states, accepted, start, futures)

    def shutdown(self) -> None:
        self.cache.shutdown()
        if self._accept_pool is not None:
            self._accept_pool.shutdown(wait=False)

    # Internals.
    @staticmethod
    def _new_matcher(compiled: Any, stop_token_ids: list[int]) -> Any:
        import xgrammar as xgr

        return xgr.GrammarMatcher(compiled, override_stop_tokens=stop_token_ids or None)

    def _sync(self, req: Request, state: _State) -> None:
        behind = req.num_output_tokens - state.num_accepted
        if behind == 0:
            return
        if behind < 0:
            state.matcher.rollback(-behind)
        else:
            for token in req.output_token_ids[state.num_accepted :]:
                if not state.matcher.accept_token(token):  # cannot happen: rebuild and replay
                    state.matcher = self._new_matcher(state.compiled, state.stop_token_ids)
                    for t in req.output_token_ids:
                        state.matcher.accept_token(t)
                    break
        state.num_accepted = req.num_output_tokens

    def _buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._host_mask is None or self._host_mask.shape[0] < rows:
            import xgrammar as xgr

            size = max(rows, self._max_rows)
            host = xgr.allocate_token_bitmask(size, self.vocab_size)
            if self.device.type == "cuda":
                host = host.pin_memory()
                self._device_mask = torch.empty_like(host, device=self.device)
            else:
                self._device_mask = host
            self._host_mask = host
            self._batch = xgr.BatchGrammarMatcher(max_threads=self._threads)
        assert self._device_mask is not None
        return self._host_mask, self._device_mask


def accept_all(matchers: list[Any], tokens: list[int]) -> list[bool]:
    """matcher[i].accept_token(tokens[i]) for each i, in one call."""
    if len(matchers) == 1:
        return [matchers[0].accept_token(tokens[0])]
    import xgrammar as xgr

    return xgr.BatchGrammarMatcher.batch_accept_token(matchers, tokens)


@dataclass(slots=True)
class _Accepting:
    """A step's accepts under way (StructuredOutput.start_accept)."""

    host_seconds: dict[str, float]  # StructuredOutput.host_seconds: the accepts' time is added
    reqs: list[Request]
    rows: list[int]
    states: list[_State]
    tokens: list[int]
    start: float
    fits: list[bool] | list[concurrent.futures.Future]

    def finish(self) -> list[bool]:
        """Per request of the step, True when it must end: its grammar has terminated, or
        its token does not fit (never, unless every token of the vocabulary was masked: a
        constraint the tokenizer cannot satisfy). Other rows: False."""
        fits = self.fits
        if fits and isinstance(fits[0], concurrent.futures.Future):
            fits = [fit for future in fits for fit in future.result()]
        self.host_seconds["accept"] += time.perf_counter() - self.start
        ends = [False] * len(self.reqs)
        for i, state, token, fit in zip(self.rows, self.states, self.tokens, fits, strict=True):
            if not fit:
                log.warning(
                    "request %s: token %d does not fit its constraint; ending it",
                    self.reqs[i].request_id,
                    token,
                )
                ends[i] = True
                continue
            state.num_accepted += 1
            ends[i] = bool(state.matcher.is_terminated())
        return ends
