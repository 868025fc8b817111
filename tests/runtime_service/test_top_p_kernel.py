"""The sort-free top-p kernel against the sampler's sorted reference (Triton's interpreter
without CUDA: tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from runtime_service.engine.sampler import _beyond_nucleus
from runtime_service.kernels.top_p_triton import top_p_mask_

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reference(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    drop = _beyond_nucleus(sorted_logits.softmax(dim=-1), top_p[:, None])
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


@pytest.mark.parametrize("vocab", [1000, 5003])
def test_top_p_kernel_keeps_the_sorted_nucleus(vocab: int) -> None:
    g = torch.Generator().manual_seed(vocab)
    rows = 6
    # Peaked, flat and mixed-sign rows; one with masked (-inf) tokens; one top_p of 1.
    logits = torch.randn(rows, vocab, generator=g) * torch.tensor([[0.5], [2], [5], [1], [3], [8]])
    logits[3, : vocab // 2] = float("-inf")
    top_p = torch.tensor([0.9, 0.5, 0.95, 0.7, 1.0, 0.1])
    ours = top_p_mask_(logits.clone().to(DEVICE), top_p.to(DEVICE)).cpu()
    expected = reference(logits, top_p)
    expected[4] = logits[4]  # top_p 1 keeps all (the sorted cumsum can round past 1 at the tail)
    assert torch.equal(ours.isinf(), expected.isinf())
    kept = ~expected.isinf()
    assert torch.equal(ours[kept], expected[kept])


def test_top_p_kernel_floor_and_done_rows() -> None:
    """A floor masks below it first (the nucleus is then of what is left, as top-k then
    top-p); rows marked done are left as they are."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 2000, generator=g) * 2
    floor = logits.topk(40, dim=-1).values[:, -1]
    top_p = torch.tensor([0.8, 1.0, 0.8])
    done = torch.tensor([0, 0, 1], dtype=torch.int32)
    ours = top_p_mask_(
        logits.clone().to(DEVICE), top_p.to(DEVICE), floor=floor.to(DEVICE), done=done.to(DEVICE)
    ).cpu()
    floored = logits.masked_fill(logits < floor[:, None], float("-inf"))
    expected = reference(floored, top_p)
    expected[1] = floored[1]
    assert torch.equal(ours[:2].isinf(), expected[:2].isinf())
    assert torch.equal(ours[2], logits[2])
