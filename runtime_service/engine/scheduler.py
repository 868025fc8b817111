"""Scheduler: which requests run in the next step, and how many tokens each.

Iteration-level (continuous) batching under two limits: `max_num_batched_tokens` tokens per
step and `max_num_seqs` running requests. Running requests go first, in arrival order, each
asking for its remaining tokens (1 when decoding, a chunk of its prompt when prefilling);
then waiting requests, first come first served, after a prefix-cache lookup. When the pool
has no block for a running request, the most recently admitted running request is preempted:
its blocks are freed and it waits again at the head of the queue, to be recomputed (with
prefix caching, mostly from its own cached blocks). With LoRA, a request also needs a device
slot for its adapter; the policy (adapter requests wait in order for slots, requests without
one pass them) is in lora/manager.py.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime_service.engine.block_manager import BlockManager
from runtime_service.engine.request import Request, RequestStatus

if TYPE_CHECKING:
    from runtime_service.engine.lora.manager import LoRAManager


@dataclass(slots=True)
class SchedulerOutput:
    """One step's work: requests with their token counts and block tables."""

    requests: list[Request] = field(default_factory=list)
    num_scheduled_tokens: list[int] = field(default_factory=list)
    block_ids: list[list[int]] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens)

    def __len__(self) -> int:
        return len(self.requests)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool,
        lora: LoRAManager | None = None,
    ) -> None:
        self.block_manager = block_manager
        self.lora = lora
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        # Ids of requests admitted for the first time since the last take_newly_scheduled().
        self._newly_scheduled: list[str] = []

    def take_newly_scheduled(self) -> list[str]:
        ids, self._newly_scheduled = self._newly_scheduled, []
        return ids

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            if req.num_output_tokens >= req.max_tokens:  # its last token is a placeholder
                i += 1  # it finishes when that token is resolved: nothing left to compute
                continue
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.block_manager.allocate_slots(req, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                out.num_preempted += 1
                if victim is req:
                    break
            else:
                scheduled.append((req, num_new))
                budget -= num_new
                i += 1
                continue
            break  # req itself was preempted: nothing else fits either

        if out.num_preempted == 0:
            budget = self._admit_waiting(budget, scheduled)

        for req, num_new in scheduled:
            out.requests.append(req)
            out.num_scheduled_tokens.append(num_new)
            out.block_ids.append(self.block_manager.block_ids(req.request_id))
        return out

    def _admit_waiting(self, budget: int, scheduled: list[tuple[Request, int]]) -> int:
        bm = self.block_manager
        held: list[Request] = []  # adapter requests waiting for a slot, in arrival order
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            if (
                self.lora is not None
                and req.adapter is not None
                and (held or not self.lora.can_acquire(req))
            ):
                held.append(self.waiting.popleft())
                continue
            hits = bm.get_computed_blocks(req)
            num_hit_tokens = len(hits) * bm.block_size
            num_new = req.num_tokens - num_hit_tokens
            if not self.enable_chunked_prefill and num_new > budget:
                break
            num_new = min(num_new, budget)
            if not bm.allocate_slots(req, num_new, hits):
                break
            self.waiting.popleft()
            if self.lora is not None and req.adapter is not None:
                self.lora.acquire(req)
            if req.num_cached_tokens < 0:  # first admission
                req.num_cached_tokens = num_hit_tokens
                req.times.first_scheduled = time.monotonic()
                bm.record_lookup(req.num_tokens, num_hit_tokens)
                self._newly_scheduled.append(req.request_id)
            req.num_computed_tokens = num_hit_tokens
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            scheduled.append((req, num_new))
            budget -= num_new
        self.waiting.extendleft(reversed(held))
        return budget

    def _preempt(self, req: Request) -> None:
        self.block_manager.free(req)
        if self.lora is not None:
            self.lora.release(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def update(self, out: SchedulerOutput) -> list[Request]:
        """Advances each scheduled request by its scheduled tokens and publishes its newly
        full blocks. Returns the requests whose step reached the end of their tokens (they
        get a sampled token)."""
        sampled = []
        for req, num_new in zip(out.requests, out.num_scheduled_tokens, strict=True):
            if req.is_finished:  # stopped by a token resolved after this step was launched
                continue
            req.num_computed_tokens += num_new
            self.block_manager.cache_full_blocks(req)
            if req.num_computed_tokens == req.num_tokens:
                sampled.append(req)
        return sampled

    def finish(self, reqs: Iterable[Request], status: RequestStatus) -> None:
        """Removes finished or aborted requests and returns their blocks to the pool."""
        for req in reqs:
            if req.is_finished:
                continue
            if req.status == RequestStatus.RUNNING:
                self.running.remove(req)
            elif req in self.waiting:
                self.waiting.remove(req)
            req.status = status
            req.times.finished = time.monotonic()
            self.block_manager.free(req)
            if self.lora is not None:
                self.lora.finish(req)
