"""Paged attention in plain torch (the CPU path, and the reference of the Triton kernels).

Exact (it is the same math as transformers' sdpa path) and device-agnostic. A batch of
decodes is one scaled_dot_product_attention over the requests' contexts gathered and padded
to the longest; otherwise one call per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from runtime_service.models.attention import AttentionMetadata


def paged_attention_reference(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    if meta.max_query_len == 1 and meta.num_seqs > 1 and len(q) == meta.num_seqs:
        return _decode_batch(q, kv_cache, meta, scale, sliding_window)
    out = torch.empty_like(q)
    starts = meta.query_start_loc.tolist()
    for i, (query_len, seq_len) in enumerate(
        zip(meta.query_lens_cpu, meta.seq_lens_cpu, strict=True)
    ):
        if query_len == 0:
            continue
        num_blocks = -(-seq_len // block_size)
        blocks = meta.block_tables[i, :num_blocks].long()
        k = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
        v = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
        q_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        if sliding_window is not None:
            mask &= k_pos[None, :] > q_pos[:, None] - sliding_window
        start = starts[i]
        qi = q[start : start + query_len].transpose(0, 1)  # [heads, query_len, d]
        oi = F.scaled_dot_product_attention(
            qi,
            k.transpose(0, 1).to(q.dtype),
            v.transpose(0, 1).to(q.dtype),
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
        out[start : start + query_len] = oi.transpose(0, 1)
    return out


def _decode_batch(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """One query token per request, all requests in one call (contexts padded and masked)."""
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    seq_lens = torch.as_tensor(meta.seq_lens_cpu, dtype=torch.long)
    max_len = int(seq_lens.max())
    num_blocks = -(-max_len // block_size)
    tables = meta.block_tables[:, :num_blocks].long()
    batch = len(q)
    k = kv_cache[0][tables].reshape(batch, num_blocks * block_size, num_kv_heads, head_dim)
    v = kv_cache[1][tables].reshape(batch, num_blocks * block_size, num_kv_heads, head_dim)
    k_pos = torch.arange(num_blocks * block_size)
    mask = k_pos[None, :] < seq_lens[:, None]  # [B, L]: the query sits at seq_len - 1
    if sliding_window is not None:
        mask &= k_pos[None, :] > seq_lens[:, None] - 1 - sliding_window
    out = F.scaled_dot_product_attention(
        q[:, :, None, :],  # [B, heads, 1, d]
        k.transpose(1, 2).to(q.dtype),
        v.transpose(1, 2).to(q.dtype),
        attn_mask=mask[:, None, None, :].to(q.device),
        scale=scale,
        enable_gqa=True,
    )
    return out[:, :, 0, :]
