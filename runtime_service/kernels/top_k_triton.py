"""Each row's k-th largest logit (top-k's floor), one program a row, no sort.

A float32 maps to a uint32 "key" whose unsigned order is the float order (flip all bits of a
negative, set the sign bit of a non-negative; -0.0 is made +0.0 first, as the comparisons
treat them). The k-th largest key is found by radix select: a digit (RADIX bits) at a time
from the top, a histogram counts the next digit of the keys that share the digits found so
far, and the digit d whose count, added to the count of larger digits, first reaches k is
the k-th key's; k drops by the count above d.

Radix select over the whole row takes 32 / RADIX passes over it, each a histogram of every
logit (0.71 ms at 256 x 128,256 on an H200, more than `torch.topk`). So the row is read
twice instead:
1. the maxima of its groups of GROUP logits; the k-th largest of them, L, is a floor of
   the answer: the k groups whose maxima are >= L hold k logits >= L;
2. every logit >= L (all of the row's k largest, ties included) is packed into a scratch
   row, in order; when they are at most CAP, the radix select runs on them in registers.
Rows where more than CAP logits reach L (flat or mostly masked rows, or k beyond the
groups) take the whole-row radix select. The value is exactly `torch.topk(x,
k).values[:, k - 1]`, ties counted with their multiplicity, and -inf when fewer than k
logits are finite; k <= 0 gives -inf (no top-k), k > V is taken as V. The sampler keeps
every token >= that floor (ties all kept).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

RADIX = 8
BLOCK = 4096
GROUP = 64
CAP = 4096  # candidates selected in registers; more take the whole-row select


@triton.jit
def _ordered_keys(x):
    """float32 -> uint32 in the float order (-0.0 as +0.0)."""
    x = tl.where(x == 0.0, 0.0, x)
    bits = x.to(tl.uint32, bitcast=True)
    negative = (bits >> 31) != 0
    return tl.where(negative, bits ^ 0xFFFFFFFF, bits | 0x80000000)


@triton.jit
def _step(hist, bins, k, prefix, known, shift, NBINS: tl.constexpr):
    """One digit of the select from its histogram: (k left, prefix, known bits)."""
    # at_least[d]: keys (sharing the prefix) whose digit is >= d; non-increasing in d.
    at_least = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
    d = tl.max(tl.where(at_least >= k, bins, 0), axis=0)
    k -= tl.sum(tl.where(bins == d, at_least - hist, 0), axis=0)
    prefix |= d.to(tl.uint32) << shift
    known |= tl.full([], NBINS - 1, tl.uint32) << shift
    return k, prefix, known


@triton.jit
def _histogram(keys, valid, prefix, known, shift, NBINS: tl.constexpr):
    """Counts of the next digit of the valid keys that share the prefix."""
    bins = tl.arange(0, NBINS)
    match = valid & ((keys & known) == prefix)
    digits = ((keys >> shift) & (NBINS - 1)).to(tl.int32)
    # Lanes that do not match are parked in bin 0 and taken out again (exact, and
    # independent of how a backend treats histogram masks).
    hist = tl.histogram(tl.where(match, digits, 0), NBINS)
    return hist - tl.where(bins == 0, tl.sum((~match).to(tl.int32), axis=0), 0)


@triton.jit
def _select_keys(keys, valid, k, RADIX_: tl.constexpr):
    """The k-th largest of the valid keys of a block in registers (k <= their count)."""
    NBINS: tl.constexpr = 1 << RADIX_
    bins = tl.arange(0, NBINS)
    prefix = tl.zeros([], tl.uint32)
    known = tl.zeros([], tl.uint32)
    for p in tl.static_range(32 // RADIX_):
        shift = 32 - RADIX_ * (p + 1)
        hist = _histogram(keys, valid, prefix, known, shift, NBINS)
        k, prefix, known = _step(hist, bins, k, prefix, known, shift, NBINS)
    return prefix


@triton.jit
def _select_row(base, V, k, RADIX_: tl.constexpr, BLOCK_: tl.constexpr):
    """The k-th largest key of a whole row, a histogram pass over the row per digit."""
    NBINS: tl.constexpr = 1 << RADIX_
    bins = tl.arange(0, NBINS)
    prefix = tl.zeros([], tl.uint32)
    known = tl.zeros([], tl.uint32)
    for p in tl.static_range(32 // RADIX_):
        shift = 32 - RADIX_ * (p + 1)
        hist = tl.zeros([NBINS], tl.int32)
        for start in range(0, V, BLOCK_):
            cols = start + tl.arange(0, BLOCK_)
            ok = cols < V
            keys = _ordered_keys(tl.load(base + cols, mask=ok, other=0.0))
            hist += _histogram(keys, ok, prefix, known, shift, NBINS)
        k, prefix, known = _step(hist, bins, k, prefix, known, shift, NBINS)
    return prefix


@triton.jit
def _kth_kernel(
    x_ptr,  # [R, V] float32
    k_ptr,  # [R] int32 or int64: each row's k (<= 0: none)
    out_ptr,  # [R] float32
    scratch_ptr,  # [R, GROUPS_P2 + CAP_] int32: group maxima, then candidates (as keys)
    V: tl.constexpr,  # the vocabulary: one compiled variant per model
    stride,
    RADIX_: tl.constexpr,
    BLOCK_: tl.constexpr,
    GROUP_: tl.constexpr,
    GROUPS_P2: tl.constexpr,  # the row's groups, rounded up to a power of two
    CAP_: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    k = tl.load(k_ptr + row).to(tl.int32)
    if k <= 0:
        tl.store(out_ptr + row, float("-inf"))
        return
    k = tl.minimum(k, V)
    base = x_ptr + row * stride
    maxima = scratch_ptr + row * (GROUPS_P2 + CAP_)
    cands = maxima + GROUPS_P2
    GROUPS: tl.constexpr = (V + GROUP_ - 1) // GROUP_
    PER_BLOCK: tl.constexpr = BLOCK_ // GROUP_
    # 1. group maxima, and their k-th largest: a floor of the row's k-th largest
    for start in range(0, V, BLOCK_):
        cols = start + tl.arange(0, BLOCK_)
        keys = _ordered_keys(tl.load(base + cols, mask=cols < V, other=float("-inf")))
        top = tl.max(tl.reshape(keys, [PER_BLOCK, GROUP_]), axis=1)
        g = start // GROUP_ + tl.arange(0, PER_BLOCK)
        tl.store(maxima + g, top.to(tl.int32, bitcast=True), mask=g < GROUPS)
    tl.debug_barrier()
    g = tl.arange(0, GROUPS_P2)
    tops = tl.load(maxima + g, mask=g < GROUPS, other=0).to(tl.uint32, bitcast=True)
    floor = _select_keys(tops, g < GROUPS, tl.minimum(k, GROUPS), RADIX_)
    floor = tl.where(k <= GROUPS, floor, 0)  # k beyond the groups: no floor
    # 2. every key >= the floor, packed in order; counted past CAP_
    count = tl.zeros([], tl.int32)
    for start in range(0, V, BLOCK_):
        cols = start + tl.arange(0, BLOCK_)
        ok = cols < V
        keys = _ordered_keys(tl.load(base + cols, mask=ok, other=0.0))
        keep = ok & (keys >= floor)
        at = count + tl.cumsum(keep.to(tl.int32), axis=0) - 1
        tl.store(cands + at, keys.to(tl.int32, bitcast=True), mask=keep & (at < CAP_))
        count += tl.sum(keep.to(tl.int32), axis=0)
    tl.debug_barrier()
    if count <= CAP_:
        c = tl.arange(0, CAP_)
        keys = tl.load(cands + c, mask=c < count, other=0).to(tl.uint32, bitcast=True)
        prefix = _select_keys(keys, c < count, k, RADIX_)
    else:
        prefix = _select_row(base, V, k, RADIX_, BLOCK_)
    negative = (prefix >> 31) == 0
    bits = tl.where(negative, prefix ^ 0xFFFFFFFF, prefix & 0x7FFFFFFF)
    tl.store(out_ptr + row, bits.to(tl.float32, bitcast=True))


def kth_largest_triton(
    logits: torch.Tensor, k: torch.Tensor, block: int = BLOCK, num_warps: int = 8
) -> torch.Tensor:
    """[R] float32: each row's k-th largest of logits [R, V] (float32, unit column stride),
    k [R] int32/int64; -inf where k <= 0. `block` is a multiple of GROUP."""
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows:
        groups_p2 = triton.next_power_of_2(triton.cdiv(vocab, GROUP))
        scratch = torch.empty(rows, groups_p2 + CAP, dtype=torch.int32, device=logits.device)
        _kth_kernel[(rows,)](
            logits, k, out, scratch, vocab, logits.stride(0), RADIX_=RADIX, BLOCK_=block,
            GROUP_=GROUP, GROUPS_P2=groups_p2, CAP_=CAP, num_warps=num_warps,
        )  # fmt: skip
    return out
