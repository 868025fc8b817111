"""The sampler's draw on CUDA, with top-p by rejection: a few passes over the rows split into
chunks, no sort and no threshold search in the common case.

Every row draws argmax(x - log q) (the Gumbel-max form of the exponential race;
q ~ Exp(1) from the counter hash of kernels/seeded_noise.py). With top-p the draw is over the
nucleus K = {x >= T}: a token is kept when the mass of the tokens strictly more likely than
it is below top_p of the row's mass (sampler.py's rule, ties at T all kept). Rejection finds
the same token without finding T (as FlashInfer's sampling does):

- draw s = argmax(x - log q) over the tokens above a pivot (at first: all of them);
- check s: the mass strictly above x[s] is below top_p * Z -> s is in K, and since K lies
  inside the region drawn from, s is also the argmax over K: the token;
- otherwise every token <= x[s] is outside K: the pivot becomes x[s], draw again.

A draw lands in K with probability mass(K) / mass(region), and each rejection removes the
region's lower part, so a row needs ~1 + ln(1/top_p) draws; the schedule below runs a fixed
number of rounds (no host sync), rows that are done skip theirs, and a row still undecided at
the end (probability <= 1e-6 by `checks_for`) takes the exact threshold search of
top_p_triton.py, which draws in the same program. The token is the one the mask-then-draw
path gives, for the same noise, whichever way it was found.

Each launch is a grid of (row, chunk) programs writing per-chunk partials (chunk max and
exp-sum, best score and column, mass above the candidate); the next launch's programs each
reduce their row's partials first (a few dozen values). Optional per row: a floor (top-k's
k-th value: tokens below it count as masked).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from runtime_service.kernels.seeded_noise_triton import _row_key, _scores
from runtime_service.kernels.top_p_triton import top_p_draw

BLOCK = 1024
# Rounds after the first draw: check, draw, then (check + speculative draw) x MIDDLE, check.
MIDDLE = 4
_BIG = tl.constexpr(2147483647)


@triton.jit
def _round_kernel(
    x_ptr,  # [R, V] float32 logits (temperature applied)
    info_ptr,  # [R, 3] int64: seed (or random key), output index, seeded
    top_p_ptr,  # [R] float32
    floor_ptr,  # [R] float32: tokens below are masked (HAS_FLOOR)
    done_ptr,  # [R] int32
    token_ptr,  # [R] int64
    stats_ptr,  # [R, CP, 2] float32: chunk max and exp-sum (written by the FIRST round)
    prev_ptr,  # [R, CP, 3] float32 partials of the previous round: mass, best score, column
    next_ptr,  # [R, CP, 3] this round's
    cand_prev_ptr,  # [R] int32: the candidate the previous round checked
    cand_next_ptr,  # [R] int32: the one this round checks
    V,
    stride,
    C,  # chunks per row
    CHUNK: tl.constexpr,
    CP: tl.constexpr,  # C rounded up to a power of 2
    BLOCK_: tl.constexpr,
    FIRST: tl.constexpr,  # draw over the whole row, no previous round
    PREV_CHECK: tl.constexpr,
    PREV_DRAW: tl.constexpr,
    DO_CHECK: tl.constexpr,  # the mass above this round's candidate
    DO_DRAW: tl.constexpr,  # the best score above the pivot
    TAKE_DRAW: tl.constexpr,  # no top-p: the previous round's draw is the token
    HAS_FLOOR: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    if FIRST:  # (each row's flag is read by later launches only)
        if chunk == 0:
            tl.store(done_ptr + row, 0)
    elif tl.load(done_ptr + row) != 0:
        return
    base = x_ptr + row * stride
    ps = tl.arange(0, CP)
    floor = float("-inf")
    if HAS_FLOOR:
        floor = tl.load(floor_ptr + row)
    row_max = 0.0
    target = 0.0
    if not FIRST:
        m = tl.load(stats_ptr + (row * CP + ps) * 2, mask=ps < C, other=float("-inf"))
        s = tl.load(stats_ptr + (row * CP + ps) * 2 + 1, mask=ps < C, other=0.0)
        row_max = tl.max(m, axis=0)
        z = tl.sum(s * tl.exp(m - row_max), axis=0)  # row_max is finite: a token is left
        target = tl.load(top_p_ptr + row) * z
    pivot = float("-inf")
    cand = -1
    if PREV_CHECK:
        checked = tl.load(cand_prev_ptr + row)
        mass = tl.sum(tl.load(prev_ptr + (row * CP + ps) * 3, mask=ps < C, other=0.0), axis=0)
        if (mass < target) | (tl.load(top_p_ptr + row) >= 1.0):
            if chunk == 0:
                tl.store(token_ptr + row, checked.to(tl.int64))
                tl.store(done_ptr + row, 1)
            return
        pivot = tl.load(base + checked)  # everything <= the rejected candidate is out
    if PREV_DRAW:
        best = tl.load(prev_ptr + (row * CP + ps) * 3 + 1, mask=ps < C, other=float("-inf"))
        col = tl.load(prev_ptr + (row * CP + ps) * 3 + 2, mask=ps < C, other=0.0).to(tl.int32)
        top = tl.max(best, axis=0)
        cand = tl.min(tl.where((best == top) & (ps < C), col, _BIG), axis=0)
        if TAKE_DRAW:
            if chunk == 0:
                tl.store(token_ptr + row, cand.to(tl.int64))
                tl.store(done_ptr + row, 1)
            return
        pivot = tl.load(base + cand)  # the next draw assumes the candidate fails its check
    if DO_CHECK & (chunk == 0):
        tl.store(cand_next_ptr + row, cand)
    if DO_CHECK | DO_DRAW | FIRST:
        key = _row_key(info_ptr, row)
        mx = tl.full([BLOCK_], float("-inf"), tl.float32)
        sm = tl.zeros([BLOCK_], tl.float32)
        above = tl.zeros([BLOCK_], tl.float32)
        best_v = tl.full([BLOCK_], float("-inf"), tl.float32)
        best_c = tl.zeros([BLOCK_], tl.int32)
        for i in range(0, CHUNK, BLOCK_):
            cols = chunk * CHUNK + i + tl.arange(0, BLOCK_)
            x = tl.load(base + cols, mask=cols < V, other=float("-inf"))
            if HAS_FLOOR:
                x = tl.where(x >= floor, x, float("-inf"))
            if FIRST:  # online max and exp-sum of the chunk
                new_mx = tl.maximum(mx, x)
                ref = tl.where(new_mx > float("-inf"), new_mx, 0.0)  # no -inf - -inf
                sm = sm * tl.exp(mx - ref) + tl.exp(x - ref)
                mx = new_mx
            if DO_CHECK:
                above += tl.where(x > pivot, tl.exp(x - row_max), 0.0)
            if DO_DRAW | FIRST:
                score = tl.where(x > pivot, _scores(x, cols, key), float("-inf"))
                better = score > best_v
                best_v = tl.where(better, score, best_v)
                best_c = tl.where(better, cols, best_c)
        out = next_ptr + (row * CP + chunk) * 3
        if FIRST:
            chunk_max = tl.max(mx, axis=0)
            ref = tl.where(chunk_max > float("-inf"), chunk_max, 0.0)
            chunk_sum = tl.sum(sm * tl.exp(mx - ref), axis=0)
            tl.store(stats_ptr + (row * CP + chunk) * 2, chunk_max)
            tl.store(stats_ptr + (row * CP + chunk) * 2 + 1, chunk_sum)
        if DO_CHECK:
            tl.store(out, tl.sum(above, axis=0))
        if DO_DRAW | FIRST:
            top_v = tl.max(best_v, axis=0)
            # Lowest column among the lanes holding the best (first occurrence, like torch);
            # a chunk with nothing above the pivot offers its first column at -inf.
            top_c = tl.min(tl.where(best_v == top_v, best_c, _BIG), axis=0)
            top_c = tl.where(top_v > float("-inf"), top_c, chunk * CHUNK)
            tl.store(out + 1, top_v)
            tl.store(out + 2, top_c.to(tl.float32))


def _chunk(rows: int, vocab: int) -> int:
    """Chunk length: at least ~2,048 programs over the batch, at most 64 chunks a row."""
    chunk = BLOCK
    while chunk < vocab and rows * triton.cdiv(vocab, chunk) > 4096:
        chunk *= 2
    while triton.cdiv(vocab, chunk) > 64:
        chunk *= 2
    return chunk


def checks_for(top_p: float, undecided: float = 1e-6) -> int:
    """Checks to schedule for the smallest top_p of a batch. A row's rejections number about
    Poisson(ln(1/top_p)) (each draw lands uniformly in the mass of its region, so the
    region's log-mass falls by Exp(1) per rejection until it is below top_p): the first n
    with P(Poisson >= n) <= `undecided`, the chance that a row is left to the fallback."""
    lam = math.log(1 / min(max(top_p, 1e-6), 1.0))
    term = tail = math.exp(-lam)  # P(Poisson = 0), then P(Poisson <= n - 1)
    n = 1
    while 1 - tail > undecided and n < 40:
        term *= lam / n
        tail += term
        n += 1
    return max(n, 2)


def sample_triton(
    logits: torch.Tensor,
    info: torch.Tensor,
    top_p: torch.Tensor | None = None,
    floor: torch.Tensor | None = None,
    checks: int = 6,
    chunk: int | None = None,
) -> torch.Tensor:
    """One token per row: argmax(logits - log q) over each row's nucleus (all of the row
    without top_p), tokens below `floor` masked. logits [R, V] float32, contiguous rows; info
    [R, 3] int64 (seed or random key, output index, seeded); top_p [R] float32 in (0, 1];
    floor [R] float32; `checks` >= 2 candidate checks are scheduled."""
    rows, vocab = logits.shape
    device = logits.device
    tokens = torch.empty(rows, dtype=torch.long, device=device)
    if not rows:
        return tokens
    chunk = chunk or _chunk(rows, vocab)
    chunks = triton.cdiv(vocab, chunk)
    cp = triton.next_power_of_2(chunks)
    f32 = torch.float32
    # One float and one int32 workspace: chunk stats [R, CP, 2], two rounds' partials
    # [R, CP, 3]; the done flags and two rounds' candidates [R] (FIRST clears the flags).
    floats = torch.empty(rows * cp * 8, dtype=f32, device=device)
    stats = floats[: rows * cp * 2]
    parts = [floats[rows * cp * (2 + 3 * i) :][: rows * cp * 3] for i in range(2)]
    ints = torch.empty(3, rows, dtype=torch.int32, device=device)
    done, cands = ints[0], [ints[1], ints[2]]
    if floor is not None:
        floor = floor.to(f32).contiguous()
    p = logits if top_p is None else top_p.to(f32).contiguous()  # (unread without top-p)
    fl = p if floor is None else floor
    k = 0

    def launch(grid_chunks: int, **flags: bool) -> None:
        nonlocal k
        _round_kernel[(rows, grid_chunks)](
            logits, info, p, fl, done, tokens, stats, parts[(k - 1) % 2], parts[k % 2],
            cands[(k - 1) % 2], cands[k % 2], vocab, logits.stride(0), chunks,
            CHUNK=chunk, CP=cp, BLOCK_=BLOCK, HAS_FLOOR=floor is not None,
            **{n: flags.get(n, False) for n in _FLAGS},
        )  # fmt: skip
        k += 1

    launch(chunks, FIRST=True)
    if top_p is None:
        launch(1, PREV_DRAW=True, TAKE_DRAW=True)
        return tokens
    launch(chunks, PREV_DRAW=True, DO_CHECK=True)  # s0
    launch(chunks, PREV_CHECK=True, DO_DRAW=True)  # s1 above s0
    for _ in range(max(checks, 2) - 2):  # check s_i, draw s_(i+1) above it
        launch(chunks, PREV_CHECK=k > 3, PREV_DRAW=True, DO_CHECK=True, DO_DRAW=True)
    launch(chunks, PREV_CHECK=k > 3, PREV_DRAW=True, DO_CHECK=True)
    launch(1, PREV_CHECK=True)
    # Rows still undecided: the exact threshold search, then the draw over what it keeps, a
    # program a row (rows done skip it).
    top_p_draw(logits, p, info, tokens, floor=floor, done=done)
    return tokens


_FLAGS = ("FIRST", "PREV_CHECK", "PREV_DRAW", "DO_CHECK", "DO_DRAW", "TAKE_DRAW")
