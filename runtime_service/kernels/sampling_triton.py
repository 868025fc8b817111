"""Sampler kernels (Triton, CUDA): penalties in place, in one launch over the batch.

The torch version in engine/sampler.py is the reference. (The draw is kernels/sample_triton.py.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
