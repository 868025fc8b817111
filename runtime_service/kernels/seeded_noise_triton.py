"""The seeded Exp(1) noise of seeded_noise.py as one Triton kernel (uint32 arithmetic)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _mix(x):
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _row_key(info_ptr, row):
    """(seed, step, seeded) of a row -> its 32-bit noise key (row_keys of seeded_noise.py);
    unseeded rows carry their random key as the seed."""
    seed = tl.load(info_ptr + row * 3)
    step = tl.load(info_ptr + row * 3 + 1)
    seeded = tl.load(info_ptr + row * 3 + 2)
    lo = (seed & 0xFFFFFFFF).to(tl.uint32)
    hi = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    k = _mix(lo ^ _mix(hi ^ _mix((step & 0xFFFFFFFF).to(tl.uint32))))
    return tl.where(seeded != 0, k, lo)


@triton.jit
def _uniform(key, cols):
    """The row's uniforms at cols, in [2^-24, 1 - 2^-24] (uniform() of seeded_noise.py)."""
    h = _mix(key ^ (cols.to(tl.uint32) * 0x9E3779B1))
    h = _mix(h ^ (key >> 7))
    return ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)


@triton.jit
def _scores(x, cols, key):
    """x - log(q), q = -log(u) the row's Exp(1) noise at cols: the Gumbel-max score."""
    return x - tl.log(-tl.log(_uniform(key, cols)))


@triton.jit
def _noise_kernel(keys_ptr, out_ptr, vocab, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    key = tl.load(keys_ptr + row).to(tl.uint32)
    tl.store(out_ptr + row * stride_out + cols, -tl.log(_uniform(key, cols)), mask=cols < vocab)


def seeded_exponential_triton(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    out = torch.empty(keys.shape[0], vocab, dtype=torch.float32, device=keys.device)
    block = 1024
    _noise_kernel[(keys.shape[0], triton.cdiv(vocab, block))](
        keys, out, vocab, out.stride(0), BLOCK=block
    )
    return out
