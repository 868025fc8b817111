"""Logits for every position of one sequence: perplexity and reference checks."""

from __future__ import annotations

import math

import torch

from runtime_service.models.attention import AttentionMetadata
from runtime_service.models.llama import LlamaModel
from runtime_service.models.loader import allocate_kv_caches

BLOCK_SIZE = 16


@torch.inference_mode()
def sequence_logits(model: LlamaModel, token_ids: list[int]) -> torch.Tensor:
    """float32 logits [len(token_ids), vocab] from one prefill of the whole sequence."""
    device, n = model.device, len(token_ids)
    num_blocks = -(-n // BLOCK_SIZE)
    kv_caches = allocate_kv_caches(model.config, num_blocks, BLOCK_SIZE, model.dtype, device)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n, device=device),
        block_tables=torch.arange(num_blocks, dtype=torch.int32, device=device)[None, :],
        query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([n], dtype=torch.int32, device=device),
        query_lens_cpu=[n],
        seq_lens_cpu=[n],
    )
    ids = torch.tensor(token_ids, device=device)
    hidden = model(ids, torch.arange(n, device=device), kv_caches, meta)
    return model.compute_logits(hidden)


def perplexity(model: LlamaModel, token_ids: list[int], window: int = 512) -> float:
    """exp(mean negative log-likelihood) of token_ids, over non-overlapping windows."""
    total_nll, count = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        chunk = token_ids[start : start + window + 1]
        if len(chunk) < 2:
            break
        logits = sequence_logits(model, chunk[:-1])
        targets = torch.tensor(chunk[1:], device=logits.device)
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        total_nll += float(nll)
        count += len(chunk) - 1
    return math.exp(total_nll / count)
