"""Reference paged attention in plain torch: one scaled_dot_product_attention per request.

Exact (it is the same math as transformers' sdpa path) and device-agnostic, but it loops over
requests in Python; CUDA uses the Triton kernels instead.
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
