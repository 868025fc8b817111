"""The top-k floor by radix select (kernels/top_k_triton.py) against torch.topk: the k-th
largest value with ties counted, on random, tied, masked and flat rows, k from 1 to the whole
row, rows without top-k (Triton's interpreter without CUDA: tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from runtime_service.kernels.top_k_triton import kth_largest_triton

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def expected(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """torch.topk's k-th value per row; -inf for k <= 0; k above the row is the row."""
    kk = k.clamp(min=1, max=logits.shape[1])
    kth = logits.topk(int(kk.max()), dim=-1).values.gather(1, kk[:, None] - 1)[:, 0]
    return torch.where(k > 0, kth, float("-inf"))


def rows(vocab: int, seed: int) -> torch.Tensor:
    """Plain, bf16-quantized (many exact ties), half masked, all masked but 3, constant,
    signed zeros, huge and tiny magnitudes, and a row with +inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(9, vocab, generator=g) * 3
    x[1] = x[1].to(torch.bfloat16).float()
    x[2, : vocab // 2] = float("-inf")
    x[3, 3:] = float("-inf")
    x[4] = 1.5
    x[5] = torch.where(torch.rand(vocab, generator=g) < 0.5, -0.0, 0.0)
    x[5, :7] = torch.tensor([-1.0, 2.0, -3.0, 4.0, -5.0, 0.5, -0.5])
    x[6] = torch.randn(vocab, generator=g) * 1e30
    x[7] = torch.randn(vocab, generator=g) * 1e-38  # subnormals
    x[8, ::97] = float("inf")
    return x


@pytest.mark.parametrize("vocab", [1000, 5003])
def test_kth_largest_is_topk(vocab: int) -> None:
    x = rows(vocab, vocab)
    for ks in (
        [1] * 9,
        [2, 7, 50, 1, 3, 6, 100, 999, 13],
        [vocab] * 9,
        [0, 5, 0, 4, 1, 8, 0, 2, 9],
    ):
        k = torch.tensor(ks)
        ours = kth_largest_triton(x.to(DEVICE), k.to(DEVICE)).cpu()
        assert torch.equal(ours, expected(x, k)), ks


def test_k_beyond_the_row_and_int32_k() -> None:
    x = rows(777, 1)
    k = torch.tensor([778, 10**6, 777, 1, 0, -1, 776, 500, 2], dtype=torch.int32)
    ours = kth_largest_triton(x.to(DEVICE), k.to(DEVICE)).cpu()
    assert torch.equal(ours, expected(x, k.long()))


def test_strided_rows_and_small_blocks() -> None:
    """Rows of a wider tensor (stride > V) and a block smaller than the row."""
    wide = rows(3000, 2)
    x = wide[:, 100:2600]
    k = torch.tensor([1, 20, 2500, 3, 9, 400, 2, 60, 7])
    ours = kth_largest_triton(x.to(DEVICE), k.to(DEVICE), block=256).cpu()
    assert torch.equal(ours, expected(x.contiguous(), k))


@pytest.mark.gpu
def test_full_vocabulary_batch_on_cuda() -> None:
    """256 rows of 128,256 logits, mixed k (some rows without top-k), ties and masked rows."""
    g = torch.Generator().manual_seed(0)
    n, vocab = 256, 128256
    x = (torch.randn(n, vocab, generator=g) * 2).cuda()
    x[::3] = x[::3].to(torch.bfloat16).float()
    x[7::11, : vocab // 3] = float("-inf")
    k = torch.tensor([0, 1, 20, 50, 1000, 128256, 200000])[torch.arange(n) % 7].cuda()
    assert torch.equal(kth_largest_triton(x, k), expected(x, k))
