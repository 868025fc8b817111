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


@triton.jit
def _penalized_copy_kernel(
    src_ptr,
    dst_ptr,
    table_of_row_ptr,  # [R] int64: the row's penalty table row, -1 for none
    settings_ptr,  # [R, 3] float32
    counts_ptr,
    prompt_mask_ptr,
    vocab,
    stride_src,
    stride_dst,
    stride_table,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < vocab
    logits = tl.load(src_ptr + row * stride_src + cols, mask=ok, other=0.0)
    table_row = tl.load(table_of_row_ptr + row)
    if table_row >= 0:
        rep = tl.load(settings_ptr + row * 3)
        presence = tl.load(settings_ptr + row * 3 + 1)
        frequency = tl.load(settings_ptr + row * 3 + 2)
        at = table_row * stride_table + cols
        counts = tl.load(counts_ptr + at, mask=ok, other=0).to(tl.float32)
        in_prompt = tl.load(prompt_mask_ptr + at, mask=ok, other=0)
        seen = (in_prompt != 0) | (counts > 0)
        penalized = tl.where(logits < 0, logits * rep, logits / rep)
        logits = tl.where(seen, penalized, logits)
        logits = logits - frequency * counts - presence * (counts > 0).to(tl.float32)
    tl.store(dst_ptr + row * stride_dst + cols, logits, mask=ok)


def penalized_copy_triton(
    logits: torch.Tensor,
    table_of_row: torch.Tensor,
    settings: torch.Tensor,
    output_counts: torch.Tensor,
    prompt_mask: torch.Tensor,
) -> torch.Tensor:
    """A copy of float32 logits [R, vocab] with each row's penalties applied: the clone and
    `apply_penalties_triton` in one pass. table_of_row [R] (-1: a row without penalties),
    settings [R, 3] = (repetition, presence, frequency) per row."""
    rows, vocab = logits.shape
    out = torch.empty((rows, vocab), dtype=logits.dtype, device=logits.device)
    block = 2048
    if rows:
        _penalized_copy_kernel[(rows, triton.cdiv(vocab, block))](
            logits, out, table_of_row, settings, output_counts,
            prompt_mask.view(torch.uint8), vocab, logits.stride(0), out.stride(0),
            output_counts.stride(0), BLOCK=block,
        )  # fmt: skip
    return out
