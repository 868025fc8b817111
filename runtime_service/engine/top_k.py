"""The k-th largest logit of each row, for top-k, without a top-k over the whole vocabulary.

`torch.topk` of a few dozen out of 128k logits costs about as much as a sort of the row. The
k largest logits lie in the k groups (of GROUP consecutive logits) with the largest maxima:
fewer than k groups have a maximum above the k-th group maximum L, and every logit above L
lies in one of them, so those k groups hold the k largest, ties of L included. So: one pass
for the group maxima, a topk of those (V / GROUP per row), and a topk of the k * GROUP logits
of the chosen groups. The values are exactly `topk(k).values`.

This is the CPU path (and the reference); on CUDA the sampler takes the floor from the
radix-select kernel (kernels/top_k_triton.py).
"""

from __future__ import annotations

import torch

GROUP = 64


def largest(logits: torch.Tensor, k: int) -> torch.Tensor:
    """[R, k]: the k largest values of each row of logits [R, V], descending."""
    rows, vocab = logits.shape
    groups = vocab // GROUP
    if k * GROUP * 8 > vocab:  # not worth it: the chosen groups would be much of the row
        return logits.topk(k, dim=-1).values
    maxima = logits[:, : groups * GROUP].reshape(rows, groups, GROUP).amax(dim=-1)
    best = maxima.topk(k, dim=-1).indices
    cols = (best[:, :, None] * GROUP + torch.arange(GROUP, device=logits.device)).reshape(rows, -1)
    values = logits.gather(1, cols)
    if groups * GROUP < vocab:  # the tail beyond the last whole group
        values = torch.cat([values, logits[:, groups * GROUP :]], dim=1)
    return values.topk(k, dim=-1).values


def kth_largest(logits: torch.Tensor, top_k: torch.Tensor, max_k: int) -> torch.Tensor:
    """[R, 1]: each row's top_k-th largest logit; -inf for rows with top_k 0 (top_k [R, 1]
    float or int, max_k >= every row's top_k, at most V)."""
    top = largest(logits, max_k)
    k = torch.where(top_k > 0, top_k.clamp(max=max_k), max_k).long()
    kth = top.gather(1, k - 1)
    return torch.where(top_k > 0, kth, float("-inf"))
