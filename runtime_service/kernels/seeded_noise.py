"""Counter-based Exp(1) noise for seeded sampling: a pure function of (seed, step, token).

A seeded request draws its token as argmax(p / q) with q ~ Exp(1) per vocabulary entry (the
exponential race). Its q comes from a hash of (seed, index of the output token, vocabulary
index), so a whole batch of seeded rows is one vectorized computation, the draw does not
depend on the batch, and it does not depend on how many times the step ran before (a
preempted request that recomputes draws the same tokens again).

The hash is 32-bit integer mixing (xorshift-multiply rounds with the "lowbias32" constants);
u = (23 bits + 0.5) / 2^23 is uniform in [2^-24, 1 - 2^-24] and q = -log(u) > 0.

NOTE: 23 bits, not 24: (2^24 - 1 + 0.5) is not a float32, it rounds to 2^24, so a 24-bit u
was exactly 1.0 once in 2^24 draws and q exactly 0. The token there then won the race
whatever its probability (x - log q = +inf), and a masked token (-inf) gave NaN, which
torch's argmax takes as the maximum: top-k, top-p and grammar masks were broken for that row
(at a 128k vocabulary, ~0.8% of rows per step). The torch version below runs
everywhere and is the reference; on CUDA the same arithmetic runs as one Triton kernel.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_GOLDEN = 0x9E3779B1


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2^32 for x in [0, 2^32) held in int64, without overflowing int64."""
    lo, hi = m & 0xFFFF, m >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def row_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """int64 [R] keys in [0, 2^32) from int64 seeds (any value) and output indices [R]."""
    lo, hi = seeds & MASK32, (seeds >> 32) & MASK32
    return _mix(lo ^ _mix(hi ^ _mix(steps & MASK32)))


def seeded_exponential_reference(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """float32 [R, vocab] of Exp(1) noise for the row keys [R] (torch ops)."""
    cols = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    x = _mix(keys[:, None] ^ _mul32(cols, _GOLDEN)[None, :])
    x = _mix(x ^ (keys[:, None] >> 7))
    return -torch.log(uniform(x))


def uniform(bits: torch.Tensor) -> torch.Tensor:
    """float32 uniforms in [2^-24, 1 - 2^-24] from 32-bit hashes (int64 in [0, 2^32))."""
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def seeded_exponential(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) noise [R, vocab] for rows with int64 seeds [R] at output indices [R]."""
    keys = row_keys(seeds, steps)
    if keys.is_cuda:
        from runtime_service.kernels.seeded_noise_triton import seeded_exponential_triton

        return seeded_exponential_triton(keys, vocab)
    return seeded_exponential_reference(keys, vocab)
