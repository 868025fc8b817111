"""Each row's k-th largest logit (top-k's floor) by radix select, one program a row, no sort.

A float32 maps to a uint32 "key" whose unsigned order is the float order (flip all bits of a
negative, set the sign bit of a non-negative; -0.0 is made +0.0 first, as the comparisons
treat them). The k-th largest key is found a digit at a time from the top: a pass over the
row counts the next RADIX bits of the keys that share the digits found so far (tl.histogram),
and the digit d whose count, added to the count of larger digits, first reaches k is the
k-th key's; k drops by the count above d. 32 / RADIX passes over the row, then the key maps
back to the float. The value is exactly `torch.topk(x, k).values[:, k - 1]`, ties counted
with their multiplicity, and -inf when fewer than k logits are finite; k <= 0 gives -inf (no
top-k), k > V is taken as V. The sampler keeps every token >= that floor (ties all kept).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

RADIX = 8
BLOCK = 4096


@triton.jit
def _ordered_keys(x):
    """float32 -> uint32 in the float order (-0.0 as +0.0)."""
    x = tl.where(x == 0.0, 0.0, x)
    bits = x.to(tl.uint32, bitcast=True)
    negative = (bits >> 31) != 0
    return tl.where(negative, bits ^ 0xFFFFFFFF, bits | 0x80000000)


@triton.jit
def _kth_kernel(
    x_ptr,  # [R, V] float32
    k_ptr,  # [R] int32 or int64: each row's k (<= 0: none)
    out_ptr,  # [R] float32
    V: tl.constexpr,  # the vocabulary: one compiled variant per model
    stride,
    RADIX_: tl.constexpr,
    BLOCK_: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    k = tl.load(k_ptr + row).to(tl.int32)
    if k <= 0:
        tl.store(out_ptr + row, float("-inf"))
        return
    k = tl.minimum(k, V)
    base = x_ptr + row * stride
    NBINS: tl.constexpr = 1 << RADIX_
    bins = tl.arange(0, NBINS)
    prefix = tl.zeros([], tl.uint32)  # the digits found so far
    known = tl.zeros([], tl.uint32)  # their bits
    for p in tl.static_range(32 // RADIX_):
        shift = 32 - RADIX_ * (p + 1)  # a constexpr: p is static
        hist = tl.zeros([NBINS], tl.int32)
        for start in range(0, V, BLOCK_):
            cols = start + tl.arange(0, BLOCK_)
            ok = cols < V
            keys = _ordered_keys(tl.load(base + cols, mask=ok, other=0.0))
            match = ok & ((keys & known) == prefix)
            digits = ((keys >> shift) & (NBINS - 1)).to(tl.int32)
            # Lanes that do not match are parked in bin 0 and taken out again (exact, and
            # independent of how a backend treats histogram masks).
            hist += tl.histogram(tl.where(match, digits, 0), NBINS)
            hist -= tl.where(bins == 0, tl.sum((~match).to(tl.int32), axis=0), 0)
        # at_least[d]: keys (sharing the prefix) whose digit is >= d; non-increasing in d.
        at_least = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
        d = tl.max(tl.where(at_least >= k, bins, 0), axis=0)
        k -= tl.sum(tl.where(bins == d, at_least - hist, 0), axis=0)
        prefix |= d.to(tl.uint32) << shift
        known |= tl.full([], NBINS - 1, tl.uint32) << shift
    negative = (prefix >> 31) == 0
    bits = tl.where(negative, prefix ^ 0xFFFFFFFF, prefix & 0x7FFFFFFF)
    tl.store(out_ptr + row, bits.to(tl.float32, bitcast=True))


def kth_largest_triton(
    logits: torch.Tensor, k: torch.Tensor, block: int = BLOCK, num_warps: int = 8
) -> torch.Tensor:
    """[R] float32: each row's k-th largest of logits [R, V] (float32, unit column stride),
    k [R] int32/int64; -inf where k <= 0."""
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows:
        _kth_kernel[(rows,)](
            logits, k, out, vocab, logits.stride(0), RADIX_=RADIX, BLOCK_=block,
            num_warps=num_warps,
        )  # fmt: skip
    return out
