"""Paged attention: per-step metadata, the KV cache write, and backend dispatch.

The KV cache of one layer is a tensor [2, num_blocks, block_size, num_kv_heads, head_dim]
(keys, then values). A request's tokens live in the blocks its block table lists, in order;
token t of a request is at slot block_table[t // block_size] * block_size + t % block_size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from runtime_service.kernels.torch_attention import paged_attention_reference


@dataclass
class AttentionMetadata:
    """Where this step's tokens come from and go to, for a flattened batch of T tokens."""

    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token's K/V
    block_tables: torch.Tensor  # [B, max_blocks] int32 (rows padded with 0)
    query_start_loc: torch.Tensor  # [B + 1] int32: request i owns tokens [qsl[i], qsl[i+1])
    seq_lens: torch.Tensor  # [B] int32: tokens in the cache after this step
    # Host copies (lists or numpy arrays), for the reference backend and kernel launch sizes.
    query_lens_cpu: list[int] | np.ndarray
    seq_lens_cpu: list[int] | np.ndarray
    # Per-step values a backend derives once and reuses in every layer.
    backend_cache: dict[str, Any] = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def max_query_len(self) -> int:
        return int(np.max(self.query_lens_cpu)) if len(self.query_lens_cpu) else 0

    @property
    def max_seq_len(self) -> int:
        return int(np.max(self.seq_lens_cpu)) if len(self.seq_lens_cpu) else 0


def write_kv(
    kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Stores k, v [T, num_kv_heads, head_dim] at their slots."""
    _, num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape
    flat = kv_cache.view(2, num_blocks * block_size, num_kv_heads, head_dim)
    flat[0].index_copy_(0, slot_mapping, k.to(kv_cache.dtype))
    flat[1].index_copy_(0, slot_mapping, v.to(kv_cache.dtype))


def paged_attention(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of q [T, num_heads, head_dim] over each request's cached K/V.
    k, v: this step's keys and values as written to the cache (the torch path reads a fresh
    prompt's from them instead of the cache; used only when they equal what the cache holds)."""
    if q.is_cuda:
        from runtime_service.kernels.triton_attention import paged_attention_triton

        return paged_attention_triton(q, kv_cache, meta, scale, sliding_window)
    if k is None or v is None or k.dtype != kv_cache.dtype:
        k = v = None
    return paged_attention_reference(q, kv_cache, meta, scale, sliding_window, k, v)
