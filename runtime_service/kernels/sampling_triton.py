"""Sampler kernels (Triton, CUDA): penalties in place, and the Gumbel-max draw in one pass.

The torch versions in engine/sampler.py and kernels/seeded_noise.py are the reference; these
do the same arithmetic (the noise hash bit for bit) in one launch over the batch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.kernels.seeded_noise_triton import _mix


@triton.jit
def _penalties_kernel(
    logits_ptr,
    batch_rows_ptr,
    table_rows_ptr,
    settings_ptr,
    counts_ptr,
    prompt_mask_ptr,
    vocab,
    stride_logits,
    stride_table,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < vocab
    row = tl.load(batch_rows_ptr + i)
    table_row = tl.load(table_rows_ptr + i)
    rep = tl.load(settings_ptr + i * 3)
    presence = tl.load(settings_ptr + i * 3 + 1)
    frequency = tl.load(settings_ptr + i * 3 + 2)
    at = logits_ptr + row * stride_logits + cols
    logits = tl.load(at, mask=ok, other=0.0)
    counts = tl.load(counts_ptr + table_row * stride_table + cols, mask=ok, other=0).to(tl.float32)
    in_prompt = tl.load(prompt_mask_ptr + table_row * stride_table + cols, mask=ok, other=0)
    seen = (in_prompt != 0) | (counts > 0)
    penalized = tl.where(logits < 0, logits * rep, logits / rep)
    logits = tl.where(seen, penalized, logits)
    logits = logits - frequency * counts - presence * (counts > 0).to(tl.float32)
    tl.store(at, logits, mask=ok)


def apply_penalties_triton(
    logits: torch.Tensor,
    batch_rows: torch.Tensor,
    table_rows: torch.Tensor,
    settings: torch.Tensor,
    output_counts: torch.Tensor,
    prompt_mask: torch.Tensor,
) -> None:
    """In place on float32 logits [R, vocab]; settings [P, 3] = (repetition, presence,
    frequency) of batch rows [P], whose counts are rows table_rows [P] of the tables."""
    vocab = logits.shape[1]
    block = 2048
    _penalties_kernel[(batch_rows.shape[0], triton.cdiv(vocab, block))](
        logits,
        batch_rows,
        table_rows,
        settings,
        output_counts,
        prompt_mask.view(torch.uint8),
        vocab,
        logits.stride(0),
        output_counts.stride(0),
        BLOCK=block,
    )


@triton.jit
def _gumbel_argmax_kernel(
    logits_ptr, keys_ptr, out_ptr, stride, VOCAB: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    key = tl.load(keys_ptr + row).to(tl.uint32)
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_col = tl.zeros([BLOCK], tl.int32)
    for start in range(0, VOCAB, BLOCK):  # constexpr bound: Triton's interpreter needs it
        cols = start + tl.arange(0, BLOCK)
        ok = cols < VOCAB
        logits = tl.load(logits_ptr + row * stride + cols, mask=ok, other=float("-inf"))
        x = _mix(key ^ (cols.to(tl.uint32) * 0x9E3779B1))
        x = _mix(x ^ (key >> 7))
        u = ((x >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)  # in (0, 1): seeded_noise.py
        score = logits - tl.log(-tl.log(u))
        better = score > best
        best = tl.where(better, score, best)
        best_col = tl.where(better, cols, best_col)
    top = tl.max(best, axis=0)
    # The lowest column among the lanes that hold the maximum (first occurrence, like torch).
    col = tl.min(tl.where(best == top, best_col, 2147483647), axis=0)
    tl.store(out_ptr + row, col.to(tl.int64))


def gumbel_argmax_triton(logits: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """argmax(logits - log(q)) per row, q the seeded Exp(1) noise of each row's key."""
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    _gumbel_argmax_kernel[(logits.shape[0],)](
        logits, keys, out, logits.stride(0), VOCAB=logits.shape[1], BLOCK=1024
    )
    return out
