"""Top-p (nucleus) masking without a sort: a per-row threshold search in one Triton program.

A token is kept when the probability mass of the tokens strictly more likely than it is below
top_p (the sampler's rule, sampler.py). That mass only falls as the logit rises, so the kept
tokens are those whose logit is at least a threshold T, and T can be found by searching the
logits' ordered bit patterns: each pass over the row measures the mass above 15 candidate
thresholds at once and narrows the interval 16-fold, so 8 passes (after one for the maximum
and one for the normalizer, plus two to finish) pin T among all 2^32 float32 values. A row of
128k logits is read 13 times (mostly from L2) instead of being sorted or searched by `topk`.

Ties at T are all kept (a sort would keep only those of them it happens to put first).

The sampler's draw finds the nucleus's token by rejection instead (sample_triton.py); this
search masks for truncate() when min-p follows top-p, and decides, drawing in the same
program (`top_p_draw`), the rare rows the rejection rounds leave undecided.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.kernels.seeded_noise_triton import _row_key, _scores

WAYS = 16  # candidate thresholds per pass (15 inside the interval)
# 16^8 = 2^32 keys; each pass leaves up to 15 keys beyond a 16th of the interval, so two more
# passes (of step 1) finish the search exactly.
PASSES = 10


@triton.jit
def _key(x):
    """float32 -> int64 key with the floats' order (negative floats' magnitude bits flipped)."""
    u = x.to(tl.int32, bitcast=True)
    return tl.where(u >= 0, u, u ^ 0x7FFFFFFF).to(tl.int64)


@triton.jit
def _load(base, cols, V, floor):
    x = tl.load(base + cols, mask=cols < V, other=float("-inf"))
    return tl.where(x >= floor, x, float("-inf"))


@triton.jit
def _top_p_kernel(
    logits_ptr,
    top_p_ptr,
    floor_ptr,  # [R] float32: logits below are masked first (HAS_FLOOR: top-k's k-th value)
    done_ptr,  # [R] int32: rows to leave alone (HAS_DONE)
    info_ptr,  # [R, 3] int64 noise keys as kernels/sample_triton.py's (DRAW)
    token_ptr,  # [R] int64 (DRAW)
    V: tl.constexpr,  # the vocabulary: one compiled variant per model
    stride,
    BLOCK: tl.constexpr,
    WAYS_: tl.constexpr,
    PASSES_: tl.constexpr,
    HAS_FLOOR: tl.constexpr,
    HAS_DONE: tl.constexpr,
    DRAW: tl.constexpr,  # instead of masking: the Gumbel-max token of what is kept
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    top_p = tl.load(top_p_ptr + row)
    floor = float("-inf")
    if HAS_FLOOR:
        floor = tl.load(floor_ptr + row)
    if HAS_DONE:  # noqa: SIM102 (a constexpr, then a loaded value)
        if tl.load(done_ptr + row) != 0:
            return
    active = (top_p < 1.0) | (floor > float("-inf"))  # else every token is kept
    if DRAW:
        active = top_p == top_p
    if active:
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            m = tl.maximum(m, _load(base, cols, V, floor))
        row_max = tl.max(m, axis=0)
        s = tl.zeros([BLOCK], tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = _load(base, cols, V, floor)
            s += tl.exp(x - row_max)
        # keep t: mass strictly above t < target (all of the row at top_p 1)
        target = tl.where(top_p < 1.0, top_p * tl.sum(s, axis=0), float("inf"))
        # Invariant: the mass above key `lo` reaches the target, the mass above `hi` does not.
        lo = _key(tl.full([1], float("-inf"), tl.float32)) - 1
        hi = _key(tl.full([1], row_max, tl.float32))
        ways = tl.arange(0, WAYS_).to(tl.int64)
        for _ in range(PASSES_):
            step = tl.maximum((hi - lo) // WAYS_, 1)
            cand = lo + ways * step  # cand[0] = lo; the last may pass hi: clamp
            cand = tl.minimum(cand, hi)
            mass = tl.zeros([WAYS_], tl.float32)
            for start in range(0, V, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = _load(base, cols, V, floor)
                e = tl.exp(x - row_max)
                above = _key(x)[None, :] > cand[:, None]
                mass += tl.sum(tl.where(above, e[None, :], 0.0), axis=1)
            below = mass >= target  # True from cand[0] up to the crossing
            below = below | (ways == 0)
            num_below = tl.sum(below.to(tl.int64), axis=0)
            new_lo = tl.max(tl.where(ways == num_below - 1, cand, lo - 1), axis=0)
            new_hi = tl.min(tl.where(ways == num_below, cand, hi + 1), axis=0)
            new_hi = tl.where(num_below == WAYS_, hi, new_hi)
            lo = tl.full([1], 0, tl.int64) + new_lo
            hi = tl.full([1], 0, tl.int64) + new_hi
        threshold = tl.max(hi, axis=0)
        if top_p >= 1.0:  # what the floor leaves
            threshold = tl.max(_key(tl.full([1], floor, tl.float32)), axis=0)
        if DRAW:
            key = _row_key(info_ptr, row)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        best_col = tl.zeros([BLOCK], tl.int32)
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = _load(base, cols, V, floor)
            keep = _key(x) >= threshold
            if DRAW:
                score = tl.where(keep, _scores(x, cols, key), float("-inf"))
                better = score > best
                best = tl.where(better, score, best)
                best_col = tl.where(better, cols, best_col)
            else:
                tl.store(base + cols, tl.where(keep, x, float("-inf")), mask=cols < V)
        if DRAW:
            top = tl.max(best, axis=0)
            col = tl.min(tl.where(best == top, best_col, 2147483647), axis=0)
            tl.store(token_ptr + row, col.to(tl.int64))


def top_p_mask_(
    logits: torch.Tensor,
    top_p: torch.Tensor,
    block: int = 1024,
    warps: int = 4,
    floor: torch.Tensor | None = None,
    done: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sets, in place, the logits outside each row's nucleus to -inf. logits [R, V] float32
    (contiguous rows), top_p [R] float32 in (0, 1]; with `floor` [R], logits below it are
    masked first (the nucleus is then of what remains); rows with `done` [R] int32 non-zero
    are left as they are."""
    _launch(logits, top_p, floor, done, None, None, block, warps)
    return logits


def top_p_draw(
    logits: torch.Tensor,
    top_p: torch.Tensor,
    info: torch.Tensor,
    tokens: torch.Tensor,
    floor: torch.Tensor | None = None,
    done: torch.Tensor | None = None,
) -> None:
    """Writes tokens [R] int64 of the rows not `done`: argmax(logits - log q) over the nucleus
    of what `floor` leaves, q the Exp(1) noise of each row's (seed, step, seeded) in info
    [R, 3] int64. The logits are left as they are."""
    _launch(logits, top_p, floor, done, info, tokens, 1024, 4)


def _launch(logits, top_p, floor, done, info, tokens, block: int, warps: int) -> None:
    rows, vocab = logits.shape
    top_p = top_p.to(torch.float32).contiguous()
    if rows:
        _top_p_kernel[(rows,)](
            logits,
            top_p,
            top_p if floor is None else floor.to(torch.float32).contiguous(),
            top_p if done is None else done,
            top_p if info is None else info,
            top_p if tokens is None else tokens,
            vocab,
            logits.stride(0),
            BLOCK=block,
            WAYS_=WAYS,
            PASSES_=PASSES,
            HAS_FLOOR=floor is not None,
            HAS_DONE=done is not None,
            DRAW=info is not None,
            num_warps=warps,
        )
