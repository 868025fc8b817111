"""The fused draw (kernels/sample_triton.py: Gumbel-max, top-p by rejection, a top-k floor)
against plain torch: the sorted nucleus, then argmax(logits - log q) with the reference noise
of kernels/seeded_noise.py (Triton's interpreter without CUDA: tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from runtime_service.kernels.sample_triton import sample_triton
from runtime_service.kernels.seeded_noise import row_keys, seeded_exponential_reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def nucleus(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Sort-based reference: a token is dropped when the more likely tokens before it
    already hold top_p of the mass (never the first); ties of the last kept value are all
    kept (a sort keeps whichever of them it put first); top_p 1 keeps all."""
    values = logits.sort(dim=-1, descending=True).values
    probs = values.softmax(dim=-1)
    drop = (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    drop[:, 0] = False
    drop[top_p >= 1.0] = False  # (the cumsum may round past 1 at the tail)
    last_kept = values.masked_fill(drop, float("inf")).min(dim=-1, keepdim=True).values
    return logits.masked_fill(logits < last_kept, float("-inf"))


def reference(logits, seeds, steps, top_p=None, top_k=None) -> list[int]:
    x = logits.clone()
    if top_k is not None:
        kth = x.topk(int(top_k.max()), dim=-1).values.gather(1, top_k[:, None] - 1)
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None:
        x = nucleus(x, top_p)
    noise = seeded_exponential_reference(row_keys(seeds, steps), x.shape[1])
    return (x - noise.log()).argmax(dim=-1).tolist()


def info_of(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    return torch.stack([seeds, steps, torch.ones_like(seeds)], dim=1).to(DEVICE)


def rows(vocab: int, seed: int) -> torch.Tensor:
    """Peaked, flat, bf16-quantized (many exact ties), partly masked and two-level rows."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([[8.0], [0.3], [2.0], [1.0], [3.0], [0.05]])
    x = torch.randn(6, vocab, generator=g) * scale
    x[2] = x[2].to(torch.bfloat16).float()
    x[3, : vocab // 2] = float("-inf")
    x[4, :5] += 12  # a few tokens hold nearly all the mass
    return x


@pytest.mark.parametrize("vocab", [1000, 3001])
@pytest.mark.parametrize("top_p", [0.02, 0.3, 0.9, 0.999, 1.0])
def test_top_p_draw_is_the_masked_draw(vocab: int, top_p: float) -> None:
    logits = rows(vocab, vocab)
    n = logits.shape[0]
    p = torch.full((n,), top_p)
    p[0] = 0.5  # a row of another top_p beside them
    expected = []
    for step in range(2):
        seeds, steps = torch.arange(n) * 7919 - 3, torch.full((n,), step)
        ours = sample_triton(logits.clone().to(DEVICE), info_of(seeds, steps), p.to(DEVICE))
        assert ours.cpu().tolist() == reference(logits, seeds, steps, p)
        expected.append(ours.cpu().tolist())
    assert len({tuple(t) for t in expected}) > 1  # the steps draw differently


@pytest.mark.parametrize("checks", [2, 3])
def test_undecided_rows_take_the_exact_search(checks: int) -> None:
    """Few checks and a tiny top_p over flat rows: the rejection rounds leave rows undecided,
    the threshold search of top_p_triton.py decides them."""
    logits = rows(2000, 5)
    n = logits.shape[0]
    p = torch.full((n,), 0.01)
    seeds, steps = torch.arange(n) + 11, torch.zeros(n, dtype=torch.long)
    ours = sample_triton(
        logits.clone().to(DEVICE), info_of(seeds, steps), p.to(DEVICE), checks=checks
    )
    assert ours.cpu().tolist() == reference(logits, seeds, steps, p)


@pytest.mark.parametrize("top_p", [None, 0.8])
def test_top_k_floor_then_top_p(top_p: float | None) -> None:
    logits = rows(1500, 2)
    n = logits.shape[0]
    top_k = torch.tensor([1, 5, 50, 7, 1500, 200])
    x = logits.clone()
    floor = x.topk(int(top_k.max()), dim=-1).values.gather(1, top_k[:, None] - 1)[:, 0]
    p = None if top_p is None else torch.full((n,), top_p)
    seeds, steps = torch.arange(n) * 31, torch.full((n,), 4)
    ours = sample_triton(
        x.to(DEVICE), info_of(seeds, steps), None if p is None else p.to(DEVICE), floor.to(DEVICE)
    )
    assert ours.cpu().tolist() == reference(logits, seeds, steps, p, top_k)


@pytest.mark.gpu
def test_full_vocabulary_batch_on_cuda() -> None:
    """256 rows of 128,256 logits (the engine's shape), all kinds of rows and settings."""
    g = torch.Generator().manual_seed(0)
    n, vocab = 256, 128256
    scale = torch.tensor([0.3, 1.0, 1.25, 3.0, 8.0])[torch.arange(n) % 5, None]
    logits = (torch.randn(n, vocab, generator=g) * scale).cuda()
    logits[::3] = logits[::3].to(torch.bfloat16).float()  # exact ties
    logits[7::11, : vocab // 3] = float("-inf")
    top_p = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0])[torch.arange(n) % 8].cuda()
    seeds, steps = torch.arange(n) * 104729, torch.arange(n) % 17
    info = info_of(seeds, steps)
    ours = sample_triton(logits.clone(), info, top_p)
    assert ours.tolist() == reference(logits, seeds.cuda(), steps.cuda(), top_p)
    top_k = torch.tensor([1, 20, 50, 1000, 128256])[torch.arange(n) % 5].cuda()
    floor = logits.topk(int(top_k.max()), dim=-1).values.gather(1, top_k[:, None] - 1)[:, 0]
    ours = sample_triton(logits.clone(), info, top_p, floor)
    assert ours.tolist() == reference(logits, seeds.cuda(), steps.cuda(), top_p, top_k)


def test_plain_draw_with_small_chunks_and_unseeded_rows() -> None:
    """Many chunks a row; an unseeded row's key is its own random key."""
    logits = rows(5003, 3)
    n = logits.shape[0]
    seeds, steps = torch.tensor([1, -5, 1 << 40, 3, 4, 2**63 - 1]), torch.arange(n) * 100
    info = info_of(seeds, steps)
    info[1, 2] = 0  # unseeded: seed column is the key
    info[1, 0] = 123456789
    ours = sample_triton(logits.clone().to(DEVICE), info, chunk=1024).cpu().tolist()
    keys = row_keys(seeds, steps)
    keys[1] = 123456789
    noise = seeded_exponential_reference(keys, logits.shape[1])
    assert ours == (logits - noise.log()).argmax(dim=-1).tolist()


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.8, top_p=0.9),
        dict(temperature=0.7, top_p=0.9, top_k=50),
        dict(temperature=1.2, top_k=20),
        dict(temperature=1.0),
        dict(temperature=0.9, top_p=0.8, min_p=0.02),
    ],
)
def test_sampler_draws_the_same_tokens_through_the_kernels(
    settings: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sample() with seeded requests: the fused path (top-k as a floor, top-p by rejection,
    the keys hashed in the kernel) against the torch path (masks, then the reference noise),
    with mixed settings in the batch (a greedy row, a row of other settings)."""
    from runtime_service.engine import sampler
    from runtime_service.engine.params import SamplingParams
    from runtime_service.engine.request import Request

    g = torch.Generator().manual_seed(9)
    logits = rows(2000, 9)
    logits = torch.cat([logits, torch.randn(2, 2000, generator=g) * 2])
    reqs = []
    for i in range(logits.shape[0]):
        kw = dict(settings, seed=1000 + i)
        if i == 6:
            kw = dict(temperature=0)  # greedy beside them
        if i == 7:
            kw = dict(temperature=1.0, top_p=0.5, seed=3)
        r = Request(f"r{i}", [1, 2], SamplingParams(**kw), (), 100)
        for t in range(i):
            r.append_output_token(t, None)
        reqs.append(r)
    expected = sampler.sample(logits.clone(), reqs).token_ids
    monkeypatch.setattr(sampler, "_fused", lambda _: True)
    assert sampler.sample(logits.clone().to(DEVICE), reqs).token_ids == expected
