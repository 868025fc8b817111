"""PenaltyState: per-request token counts on the device, for batched penalties.

Penalties need, per row, which tokens the prompt holds (repetition) and how often each token
was generated (repetition, presence, frequency). Rebuilding those from Python lists each step
costs O(tokens) per row; instead each request with penalties owns a row of two device tables,
filled once from its prompt when it is first sampled and bumped by one scatter per step for
the whole batch.

NOTE: rows are handed out on first use and taken back lazily: when none is free, the rows of
finished requests are reclaimed, and only then do the tables grow (doubling).
"""

from __future__ import annotations

import itertools

import torch

from runtime_service.engine.request import Request

_GENERATIONS = itertools.count()


class PenaltyState:
    def __init__(self, vocab_size: int, device: torch.device, capacity: int = 8) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.prompt_mask = torch.zeros(capacity, vocab_size, dtype=torch.bool, device=device)
        self.output_counts = torch.zeros(capacity, vocab_size, dtype=torch.int32, device=device)
        self.owners: list[Request | None] = [None] * capacity
        self.rows: dict[int, int] = {}  # id(request) -> row
        # Renewed whenever a row changes hands, unique across tables: the sampler's cached
        # table rows of a batch (sampling_batch.py) hold while it is unchanged.
        self.generation = next(_GENERATIONS)

    @property
    def capacity(self) -> int:
        return len(self.owners)

    def rows_of(self, reqs: list[Request]) -> torch.Tensor:
        """The table rows of `reqs` [P] (assigning rows to requests seen for the first time)."""
        rows = []
        for req in reqs:
            row = self.rows.get(id(req))
            if row is None or self.owners[row] is not req:
                row = self._assign(req)
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long).to(self.device, non_blocking=True)

    def add_tokens(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Counts one new output token per row (rows [P], distinct, tokens [P] on the device):
        the rows are distinct, so a gather and a plain scatter (no accumulating index_put,
        which sorts on CUDA)."""
        self.output_counts[rows, tokens] = self.output_counts[rows, tokens] + 1

    def _assign(self, req: Request) -> int:
        self.generation = next(_GENERATIONS)
        if None not in self.owners:
            self._reclaim()
        if None not in self.owners:
            self._grow()
        row = self.owners.index(None)
        self.owners[row] = req
        self.rows[id(req)] = row
        vocab = self.vocab_size
        prompt = torch.tensor([t for t in req.prompt_token_ids if t < vocab], dtype=torch.long)
        # Placeholders (< 0) are counted by `add_tokens` in the step that samples them.
        outputs = torch.tensor(
            [t for t in req.output_token_ids if 0 <= t < vocab], dtype=torch.long
        )
        self.prompt_mask[row].zero_()
        self.prompt_mask[row, prompt.to(self.device)] = True
        counts = torch.bincount(outputs, minlength=vocab).to(torch.int32)
        self.output_counts[row].copy_(counts)
        return row

    def _reclaim(self) -> None:
        for row, owner in enumerate(self.owners):
            if owner is not None and owner.is_finished:
                self.owners[row] = None
                del self.rows[id(owner)]

    def _grow(self) -> None:
        extra = self.capacity
        self.prompt_mask = torch.cat([self.prompt_mask, torch.zeros_like(self.prompt_mask)])
        self.output_counts = torch.cat([self.output_counts, torch.zeros_like(self.output_counts)])
        self.owners.extend([None] * extra)
