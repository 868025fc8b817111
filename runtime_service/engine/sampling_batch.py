"""The sampling settings of a batch as tensors, built once per batch composition.

A decode batch keeps the same requests, in the same order, for many steps, and a request's
SamplingParams do not change. So the per-row settings (temperature, top-k, top-p, min-p,
seeds, penalties, which rows are greedy) are read from the requests and copied to the device
once, and looked up by the requests' identities afterwards (`batch_settings`). What changes
every step is read per step: the output index of seeded rows, the min_tokens state of the
(few) rows with min_tokens, and the random keys of unseeded rows.

The cache holds the requests it was built for (so their ids cannot be reused meanwhile) and
keeps the last CACHED compositions.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch

from runtime_service.engine.request import Request

CACHED = 4


def _int64(seed: int) -> int:
    """A seed in [0, 2^64) as the int64 of the same bits (row_keys masks the halves)."""
    return seed - (1 << 64) if seed >= 1 << 63 else seed


@dataclass(slots=True)
class RowSettings:
    """Truncation and draw settings of a list of (non-greedy) requests."""

    reqs: list[Request]
    temperature: torch.Tensor  # [R, 1] float32, device
    unit_temperature: bool  # every row at temperature 1
    top_k: torch.Tensor  # [R, 1] float32, device (0: none)
    k: torch.Tensor  # [R] int64, device (0: none)
    top_p: torch.Tensor  # [R, 1] float32, device
    min_p: torch.Tensor  # [R, 1] float32, device
    use_top_k: bool
    use_top_p: bool
    use_min_p: bool
    every_row_top_k: bool
    max_k: int  # min(largest top_k, vocab)
    min_top_p: float
    seeded_rows: list[int]
    draw_template: torch.Tensor  # [R, 3] int64, host: (seed, 0, 1) or (0, 0, 0)
    seeded: torch.Tensor  # [R] bool, host

    @classmethod
    def of(cls, reqs: list[Request], vocab: int, device: torch.device) -> RowSettings:
        params = [r.params for r in reqs]
        settings = _host(
            "f", [v for p in params for v in (p.temperature, p.top_k, p.top_p, p.min_p)], 4
        ).to(device, non_blocking=True)
        temperature, top_k, top_p, min_p = (settings[:, i : i + 1] for i in range(4))
        seeds = [p.seed for p in params]
        template = _host(
            "q", [v for s in seeds for v in ((0, 0, 0) if s is None else (_int64(s), 0, 1))], 3
        )
        max_top_k = max((p.top_k for p in params), default=0)
        return cls(
            reqs=reqs,
            temperature=temperature,
            unit_temperature=all(p.temperature == 1.0 for p in params),
            top_k=top_k,
            k=top_k[:, 0].long(),
            top_p=top_p,
            min_p=min_p,
            use_top_k=max_top_k > 0,
            use_top_p=any(p.top_p < 1.0 for p in params),
            use_min_p=any(p.min_p > 0 for p in params),
            every_row_top_k=all(p.top_k > 0 for p in params),
            max_k=min(max_top_k, vocab),
            min_top_p=min((p.top_p for p in params), default=1.0),
            seeded_rows=[i for i, s in enumerate(seeds) if s is not None],
            draw_template=template,
            seeded=template[:, 2] != 0,
        )

    def draw_info(self) -> torch.Tensor:
        """[R, 3] int64 on the host, this step's: (seed, output index, 1) for seeded rows,
        (random key, 0, 0) for the others (one torch.randint for all rows, as before)."""
        info = self.draw_template.clone()
        if len(self.seeded_rows) < len(self.reqs):
            keys = torch.randint(0, 1 << 32, (len(self.reqs),))
            info[:, 0] = torch.where(self.seeded, info[:, 0], keys)
        if self.seeded_rows:
            steps = _host("q", [len(r.output_token_ids) for r in self.reqs], 1)[:, 0]
            info[:, 1] = torch.where(self.seeded, steps, 0)
        return info


@dataclass(slots=True)
class BatchSettings:
    """Which rows of a batch need what; the settings of its random rows."""

    reqs: list[Request]
    random_rows: list[int]
    random_index: torch.Tensor | None  # [len(random_rows)] long, device (a mixed batch)
    random: RowSettings | None
    penalty_rows: list[int]
    penalty_index: torch.Tensor | None  # [P] long, device
    penalty_settings: torch.Tensor | None  # [R, 3] float32: repetition, presence, frequency
    min_tokens_rows: list[int]  # rows with min_tokens and stop tokens
    constrained_logprobs: bool  # a constrained row wants logprobs (of the raw logits)
    want: list[int | None]  # per row: its logprobs setting
    table_rows: torch.Tensor | None = None  # penalty table rows, valid for table_key
    table_of_row: torch.Tensor | None = None  # [R] long, device: table row or -1 (table_key)
    table_key: int | None = None  # the PenaltyState generation they were read at

    @classmethod
    def of(cls, reqs: list[Request], vocab: int, device: torch.device) -> BatchSettings:
        params = [r.params for r in reqs]
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        penalty_rows = [i for i, p in enumerate(params) if p.has_penalties]
        mixed = 0 < len(random_rows) < len(reqs)
        penalty_settings = None
        if penalty_rows:
            penalty_settings = _host(
                "f",
                [
                    v
                    for p in params
                    for v in (p.repetition_penalty, p.presence_penalty, p.frequency_penalty)
                ],
                3,
            ).to(device, non_blocking=True)
        return cls(
            reqs=reqs,
            random_rows=random_rows,
            random_index=_index(random_rows, device) if mixed else None,
            random=(
                RowSettings.of([reqs[i] for i in random_rows], vocab, device)
                if random_rows
                else None
            ),
            penalty_rows=penalty_rows,
            penalty_index=_index(penalty_rows, device) if penalty_rows else None,
            penalty_settings=penalty_settings,
            min_tokens_rows=[
                i for i, r in enumerate(reqs) if r.params.min_tokens > 0 and r.stop_tokens
            ],
            constrained_logprobs=any(
                p.constraint is not None and p.logprobs is not None for p in params
            ),
            want=[p.logprobs for p in params],
        )

    def early_rows(self) -> list[int]:
        """Rows whose stop tokens are still masked (fewer outputs than min_tokens)."""
        reqs = self.reqs
        return [
            i for i in self.min_tokens_rows if reqs[i].num_output_tokens < reqs[i].params.min_tokens
        ]


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return _host("q", rows, 1)[:, 0].to(device, non_blocking=True)


def _host(typecode: str, flat: list, width: int) -> torch.Tensor:
    """[len(flat) / width, width] float32 ("f") or int64 ("q") host tensor of a flat list
    (through array: half the time of torch.tensor on a list of tuples)."""
    dtype = torch.float32 if typecode == "f" else torch.long
    if not flat:
        return torch.empty(0, width, dtype=dtype)
    return torch.frombuffer(array(typecode, flat), dtype=dtype).view(-1, width)


_cache: OrderedDict[tuple, BatchSettings] = OrderedDict()


def batch_settings(reqs: list[Request], vocab: int, device: torch.device) -> BatchSettings:
    """The settings of `reqs`, from the cache when the same requests were sampled in the same
    order (on the same device, at the same vocabulary) recently."""
    key = (tuple(map(id, reqs)), vocab, device)
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
        return found
    found = BatchSettings.of(list(reqs), vocab, device)
    _cache[key] = found
    while len(_cache) > CACHED:
        _cache.popitem(last=False)
    return found
