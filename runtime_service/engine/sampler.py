"""Sampler: logits of the requests due a token -> token ids (and logprobs), batched.

Order of operations, per row: penalties (repetition on prompt and output tokens as in
transformers; presence and frequency on output tokens as in OpenAI's API), the min_tokens
mask of stop tokens, then greedy argmax, or temperature, top-k, top-p, min-p and a draw.
Every step is one set of tensor operations over the batch: the per-request settings are
tensors built once per batch composition (sampling_batch.py) and only what changes between
steps is read per step (seeded rows' output indices, rows still under min_tokens, random
keys); penalties read device tables (penalties.py); on CUDA top-k is a per-row floor found
by radix select (kernels/top_k_triton.py) and top-p is decided in the draw.

The draw is argmax(p / q) with q ~ Exp(1) (the exponential-race form of sampling from p).
A seeded request's q is a hash of (seed, output index, token) (kernels/seeded_noise.py), so
its tokens do not depend on what else shares the batch; unseeded rows share one random draw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from runtime_service.engine.penalties import PenaltyState
from runtime_service.engine.request import Request, TokenLogprobs
from runtime_service.engine.sampling_batch import BatchSettings, RowSettings, batch_settings
from runtime_service.engine.top_k import kth_largest
from runtime_service.kernels.seeded_noise import row_keys, seeded_exponential_reference


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def apply_penalties(
    logits: torch.Tensor,
    reqs: list[Request],
    state: PenaltyState | None = None,
    batch: BatchSettings | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Penalizes the rows of requests with penalties in place; returns (batch rows, table
    rows) of those requests, for counting their new tokens, or None when there are none."""
    device = logits.device
    batch = batch or batch_settings(reqs, logits.shape[1], device)
    if not batch.penalty_rows:
        return None
    state = state or PenaltyState(logits.shape[1], device)
    table_rows = _table_rows(batch, state)
    batch_rows, settings = batch.penalty_index, batch.penalty_settings
    assert batch_rows is not None and settings is not None
    settings = settings[batch_rows]
    if logits.is_cuda:
        from runtime_service.kernels.sampling_triton import apply_penalties_triton

        apply_penalties_triton(
            logits, batch_rows, table_rows, settings, state.output_counts, state.prompt_mask
        )
        return batch_rows, table_rows
    rep, presence, frequency = (settings[:, i : i + 1] for i in range(3))
    counts = state.output_counts[table_rows].to(torch.float32)
    seen = state.prompt_mask[table_rows] | (counts > 0)
    values = logits[batch_rows]
    penalized = torch.where(values < 0, values * rep, values / rep)
    values = torch.where(seen, penalized, values)
    values = values - frequency * counts - presence * (counts > 0).to(torch.float32)
    logits[batch_rows] = values
    return batch_rows, table_rows


def _table_rows(batch: BatchSettings, state: PenaltyState) -> torch.Tensor:
    """The penalty table rows of the batch's penalized requests: looked up again only when
    the table handed out or took back rows since (its generation)."""
    if batch.table_rows is None or batch.table_key != state.generation:
        batch.table_rows = state.rows_of([batch.reqs[i] for i in batch.penalty_rows])
        batch.table_key = state.generation
        batch.table_of_row = None
    return batch.table_rows


def _penalized_copy(
    logits: torch.Tensor, batch: BatchSettings, state: PenaltyState
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """CUDA: a copy of the logits with the penalties applied, in one pass (the clone the
    sampler needs anyway and the penalties together); -> (copy, (batch rows, table rows))."""
    from runtime_service.kernels.sampling_triton import penalized_copy_triton

    table_rows = _table_rows(batch, state)
    batch_rows = batch.penalty_index
    assert batch_rows is not None and batch.penalty_settings is not None
    if batch.table_of_row is None:
        full = torch.full((len(batch.reqs),), -1, dtype=torch.long, device=logits.device)
        batch.table_of_row = full.index_copy_(0, batch_rows, table_rows)
    out = penalized_copy_triton(
        logits, batch.table_of_row, batch.penalty_settings, state.output_counts, state.prompt_mask
    )
    return out, (batch_rows, table_rows)


def mask_early_stops(
    logits: torch.Tensor, reqs: list[Request], batch: BatchSettings | None = None
) -> None:
    """Stop tokens cannot end a request before its min_tokens."""
    vocab = logits.shape[1]
    batch = batch or batch_settings(reqs, vocab, logits.device)
    rows, cols = [], []
    for row in batch.early_rows():
        ids = [t for t in reqs[row].stop_tokens if t < vocab]
        rows.extend([row] * len(ids))
        cols.extend(ids)
    if rows:
        logits[torch.tensor(rows), torch.tensor(cols)] = float("-inf")


def truncate(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p on float32 logits of non-greedy rows."""
    s = RowSettings.of(reqs, logits.shape[1], logits.device)
    return _truncate(logits, s, defer=False)[0]


def _truncate(
    logits: torch.Tensor, s: RowSettings, defer: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """-> (logits, top_p, floor): with `defer` (CUDA, no min-p), top-k and top-p are left to
    the draw (kernels/sample_triton.py) as each row's top_p [R] and k-th logit [R] (None
    when no row has one); otherwise applied here (both None)."""
    if defer and _fused(logits) and not s.use_min_p:  # top-p by rejection in the draw
        # (the draw leaves its logits alone: temperature 1 needs no copy)
        if not s.unit_temperature:
            logits = logits / s.temperature
        floor = None
        if s.use_top_k:
            from runtime_service.kernels.top_k_triton import kth_largest_triton

            floor = kth_largest_triton(logits.contiguous(), s.k)
        return logits, (s.top_p[:, 0] if s.use_top_p else None), floor
    logits = logits / s.temperature
    top_k, top_p, min_p = s.top_k, s.top_p, s.min_p
    if s.use_top_p and logits.is_cuda and not s.every_row_top_k:  # the nucleus by threshold
        if s.use_top_k:
            logits = _top_k(logits, s)
        from runtime_service.kernels.top_p_triton import top_p_mask_

        logits = top_p_mask_(logits.contiguous(), top_p[:, 0])
    elif s.use_top_p:
        logits = _top_k_top_p(logits, s.reqs, top_k, top_p)
    elif s.use_top_k:
        logits = _top_k(logits, s)
    if s.use_min_p:
        probs = logits.softmax(dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * min_p
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits, None, None


def _top_k(logits: torch.Tensor, s: RowSettings) -> torch.Tensor:
    """Masks all but each row's top_k largest logits (ties of the k-th kept); rows with
    top_k 0 are left whole."""
    return logits.masked_fill(logits < _kth(logits, s), float("-inf"))


def _kth(logits: torch.Tensor, s: RowSettings) -> torch.Tensor:
    """[R, 1]: each row's top_k-th largest logit (-inf for rows with top_k 0)."""
    if logits.is_cuda:
        from runtime_service.kernels.top_k_triton import kth_largest_triton

        return kth_largest_triton(logits.contiguous(), s.k)[:, None]
    return kth_largest(logits, s.top_k, s.max_k)


# Candidates for top-p without a top-k: the nucleus is found among this many of the most
# likely tokens when they hold top_p of the mass (else the row falls back to a full sort).
TOP_P_CANDIDATES = 1024


def _top_k_top_p(
    logits: torch.Tensor, reqs: list[Request], top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Top-k then top-p (keep ties of the k-th value, as transformers does; drop a token when
    the more likely tokens before it already reach top_p), over the `width` most likely
    tokens of each row in descending order: every row's top_k when all rows have one, else
    at least TOP_P_CANDIDATES; a row without top_k whose candidates hold less than its top_p
    of the mass is sorted whole (rare: a very flat distribution)."""
    vocab = logits.shape[1]
    widest = max(r.params.top_k for r in reqs)
    if all(r.params.top_k > 0 for r in reqs):
        width = min(widest, vocab)
    else:
        width = min(max(TOP_P_CANDIDATES, widest), vocab)
    values, order = logits.topk(width, dim=-1)
    k = torch.where(top_k > 0, top_k.clamp(max=width), width).long()
    values = values.masked_fill(values < values.gather(1, k - 1), float("-inf"))
    # The distribution top-p cuts: the kept top-k tokens, or the whole row without top_k.
    norm = torch.where(
        top_k > 0,
        values.logsumexp(dim=-1, keepdim=True),
        logits.logsumexp(dim=-1, keepdim=True),
    )
    probs = (values - norm).exp()
    values = values.masked_fill(_beyond_nucleus(probs, top_p), float("-inf"))
    out = torch.full_like(logits, float("-inf")).scatter_(1, order, values)
    if width < vocab:
        short = ((probs.sum(dim=-1, keepdim=True) < top_p) & (top_k <= 0))[:, 0]
        if bool(short.any()):
            rows = short.nonzero()[:, 0]
            sorted_logits, full_order = logits[rows].sort(dim=-1, descending=True)
            drop = _beyond_nucleus(sorted_logits.softmax(dim=-1), top_p[rows])
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            out[rows] = torch.empty_like(sorted_logits).scatter_(1, full_order, sorted_logits)
    return out


def _beyond_nucleus(sorted_probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Tokens (in descending order) whose more likely tokens already reach top_p; never the
    first."""
    drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
    drop[:, 0] = False
    return drop


def draw(
    logits: torch.Tensor,
    reqs: list[Request],
    top_p: torch.Tensor | None = None,
    floor: torch.Tensor | None = None,
    settings: RowSettings | None = None,
) -> torch.Tensor:
    """One token per row from softmax(logits) by the Gumbel-max form of the exponential race:
    argmax(logits - log q), q ~ Exp(1) from each row's noise key (seeded rows: a hash of seed
    and output index; the others: a random key per row and step). On CUDA, `top_p` [R] and
    `floor` [R] (from `_truncate(defer=True)`) restrict each row to its nucleus of the tokens
    at or above its floor: the same token as masking them first."""
    device = logits.device
    s = settings or RowSettings.of(reqs, logits.shape[1], device)
    if _fused(logits):
        from runtime_service.kernels.sample_triton import checks_for, sample_triton

        # (seed, output index, 1) or (random key, 0, 0) per row: one copy, the keys are
        # hashed in the kernel.
        info = s.draw_info().to(device, non_blocking=True)
        return sample_triton(logits.contiguous(), info, top_p, floor, checks_for(s.min_top_p))
    seeded = s.seeded_rows
    if len(seeded) < len(reqs):
        keys_t = torch.randint(0, 1 << 32, (len(reqs),), dtype=torch.long, device=device)
    if seeded:
        pairs_t = s.draw_info()[seeded, :2].to(device, non_blocking=True)
        seeded_keys = row_keys(pairs_t[:, 0], pairs_t[:, 1])
        if len(seeded) == len(reqs):
            keys_t = seeded_keys
        else:
            keys_t[torch.tensor(seeded).to(device, non_blocking=True)] = seeded_keys
    noise = seeded_exponential_reference(keys_t, logits.shape[1])
    return (logits - noise.log()).argmax(dim=-1)


def _fused(logits: torch.Tensor) -> bool:
    """Whether the sampler's Triton kernels run: the draw (kernels/sample_triton.py), the top-k
    floor and the penalized copy (CUDA; tests also run them on the CPU in Triton's
    interpreter)."""
    return logits.is_cuda


def _truncate_and_draw(logits: torch.Tensor, s: RowSettings) -> torch.Tensor:
    if _fused(logits):
        truncated, top_p, floor = _truncate(logits, s, defer=True)
        return draw(truncated, s.reqs, top_p, floor, s)
    return draw(_truncate(logits, s, defer=False)[0], s.reqs, settings=s)


@dataclass(slots=True)
class DeviceSample:
    """A step's sampled tokens [S] and, for rows that want them, logprob tensors, still on the
    device: `to_host` turns them into lists (it waits for the device)."""

    tokens: torch.Tensor
    want: list[int | None]  # per row: its logprobs setting
    chosen: torch.Tensor | None = None  # [S] logprob of the sampled token
    top_ids: torch.Tensor | None = None  # [S, max n]
    top_values: torch.Tensor | None = None

    def copy_to_host(self) -> DeviceSample:
        """Non-blocking copies into pinned host memory (on CUDA); the caller waits on an
        event recorded after them before reading."""
        if not self.tokens.is_cuda:
            return self

        def host(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            return out.copy_(t, non_blocking=True)

        return DeviceSample(
            host(self.tokens),  # type: ignore[arg-type]
            self.want,
            host(self.chosen),
            host(self.top_ids),
            host(self.top_values),
        )

    def to_host(self) -> SamplerOutput:
        tokens = self.tokens.tolist()
        if self.chosen is None:
            return SamplerOutput(tokens, [None] * len(tokens))
        chosen = self.chosen.tolist()
        top_ids = None if self.top_ids is None else self.top_ids.tolist()
        top_values = None if self.top_values is None else self.top_values.tolist()
        out: list[TokenLogprobs | None] = []
        for row, n in enumerate(self.want):
            if n is None:
                out.append(None)
                continue
            top = []
            if n and top_ids is not None and top_values is not None:
                top = list(zip(top_ids[row][:n], top_values[row][:n], strict=True))
            out.append(TokenLogprobs(tokens[row], chosen[row], top))
        return SamplerOutput(tokens, out)


def _logprobs(raw: torch.Tensor, tokens: torch.Tensor, want: list[int | None]) -> DeviceSample:
    if all(n is None for n in want):
        return DeviceSample(tokens, want)
    logprobs = raw.log_softmax(dim=-1)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    max_n = max(n or 0 for n in want)
    if not max_n:
        return DeviceSample(tokens, want, chosen)
    top_values, top_ids = logprobs.topk(max_n, dim=-1)
    return DeviceSample(tokens, want, chosen, top_ids, top_values)


def sample_on_device(
    logits: torch.Tensor,
    reqs: list[Request],
    penalties: PenaltyState | None = None,
    constrain: Callable[[torch.Tensor, list[Request]], None] | None = None,
) -> DeviceSample:
    """logits [len(reqs), vocab] float32 -> one token per request, left on the device.

    `penalties` keeps the token counts of requests with penalties across steps (one per
    engine); without it they are rebuilt from the requests' tokens for this call.
    `constrain` masks, in place, the tokens constrained rows may not take (structured output),
    before penalties and truncation; logprobs stay those of the raw distribution.
    The per-row settings come from `batch_settings` (built once per batch composition).
    """
    raw = logits
    batch = batch_settings(reqs, logits.shape[1], logits.device)
    early = batch.early_rows() if batch.min_tokens_rows else []
    needs_copy = bool(batch.penalty_rows or early or batch.constrained_logprobs)
    penalized = None
    if batch.penalty_rows and _fused(logits):  # the copy and the penalties in one pass
        # (the grammar's -inf masks then come after the penalties: the same logits)
        state = penalties or PenaltyState(logits.shape[1], logits.device)
        logits, penalized = _penalized_copy(logits, batch, state)
    elif needs_copy:
        logits = logits.clone()
    if constrain is not None:
        constrain(logits, reqs)
    if penalized is None:
        penalized = apply_penalties(logits, reqs, penalties, batch)
    if early:
        mask_early_stops(logits, reqs, batch)
    s = batch.random
    if s is not None and batch.random_index is None:  # every row draws
        tokens = _truncate_and_draw(logits, s)
    else:
        tokens = logits.argmax(dim=-1)
    if s is not None and batch.random_index is not None:
        index = batch.random_index
        tokens[index] = _truncate_and_draw(logits[index], s)
    if penalized is not None and penalties is not None:
        batch_rows, table_rows = penalized
        penalties.add_tokens(table_rows, tokens[batch_rows])
    return _logprobs(raw, tokens, batch.want)


def sample(
    logits: torch.Tensor,
    reqs: list[Request],
    penalties: PenaltyState | None = None,
    constrain: Callable[[torch.Tensor, list[Request]], None] | None = None,
) -> SamplerOutput:
    """`sample_on_device`, then its tokens and logprobs on the host."""
    return sample_on_device(logits, reqs, penalties, constrain).to_host()
