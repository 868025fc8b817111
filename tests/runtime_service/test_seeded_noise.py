"""Seeded sampling noise: the Triton kernel against the torch reference, and its law."""

from __future__ import annotations

import pytest
import torch

from runtime_service.kernels.seeded_noise import (
    row_keys,
    seeded_exponential,
    seeded_exponential_reference,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_triton_kernel_equals_the_reference() -> None:
    # tests/conftest.py sets TRITON_INTERPRET=1 on machines without CUDA.
    triton_noise = pytest.importorskip("runtime_service.kernels.seeded_noise_triton")
    seeds = torch.tensor([0, 1, -5, 2**40 + 3, 123456789], dtype=torch.long, device=DEVICE)
    steps = torch.tensor([0, 7, 3, 0, 100], dtype=torch.long, device=DEVICE)
    keys = row_keys(seeds, steps)
    ours = triton_noise.seeded_exponential_triton(keys, 1500)
    ref = seeded_exponential_reference(keys, 1500)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_noise_is_a_function_of_seed_and_step_only() -> None:
    seeds = torch.tensor([11, 12, 11], dtype=torch.long)
    steps = torch.tensor([4, 4, 5], dtype=torch.long)
    noise = seeded_exponential(seeds, steps, 300)
    alone = seeded_exponential(seeds[:1], steps[:1], 300)
    assert torch.equal(noise[0], alone[0])
    assert not torch.equal(noise[0], noise[1])  # another seed
    assert not torch.equal(noise[0], noise[2])  # another output position


def test_noise_is_exponential() -> None:
    noise = seeded_exponential(torch.arange(64), torch.zeros(64, dtype=torch.long), 4096)
    assert noise.min() > 0
    assert abs(noise.mean().item() - 1.0) < 0.01  # mean and variance of Exp(1) are 1
    assert abs(noise.var().item() - 1.0) < 0.03


def test_noise_is_never_zero_or_infinite() -> None:
    """The extreme hashes give uniforms strictly inside (0, 1), so q = -log(u) is finite and
    positive: a q of 0 made its token win whatever its logit, and a masked token NaN (which
    argmax takes as the maximum). 24-bit uniforms had u == 1.0 for the largest hash."""
    from runtime_service.kernels.seeded_noise import uniform

    bits = torch.tensor([0, 1, 511, 512, (1 << 32) - 512, (1 << 32) - 1], dtype=torch.int64)
    u = uniform(bits)
    assert (u > 0).all() and (u < 1).all()
    q = -torch.log(u)
    assert torch.isfinite(q).all() and (q > 0).all()
    masked = torch.full_like(q, float("-inf"))
    assert not torch.isnan(masked - q.log()).any()
