"""Paged attention in plain torch (the CPU path, and the reference of the Triton kernels).

Exact (it is the same math as transformers' sdpa path) and device-agnostic. Three shapes of
step, each as few scaled_dot_product_attention calls as it allows:

- A batch of decodes: one call over the requests' contexts gathered from the cache and padded
  to the longest. The slot indices and the padding mask depend only on the step, so they are
  built once per step (in `meta.backend_cache`) and every layer reuses them; the query heads
  that share a KV head are laid out as that head's queries, so no KV head is repeated.
- Fresh prompts (nothing cached before this step) of one length, given the step's own k and v:
  one causal call over them, without reading the cache.
- Anything else: one call per request; a fresh prompt attends over its own k and v, the others
  over their blocks of the cache.
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
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [T, heads, d] over each request's cached K/V; k, v [T, kv_heads, d] (optional) are
    this step's own keys and values, already in the cache, which fresh prompts read directly."""
    if meta.max_query_len == 1 and meta.num_seqs > 1 and len(q) == meta.num_seqs:
        return _decode_batch(q, kv_cache, meta, scale, sliding_window)
    query_lens = [int(n) for n in meta.query_lens_cpu]
    seq_lens = [int(n) for n in meta.seq_lens_cpu]
    own = k is not None and v is not None and len(q) == sum(query_lens)
    if own and len(set(query_lens)) == 1 and query_lens == seq_lens:
        return _fresh_batch(q, k, v, len(query_lens), scale, sliding_window)  # type: ignore[arg-type]
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    out = torch.empty_like(q)
    starts = meta.query_start_loc.tolist()
    for i, (query_len, seq_len) in enumerate(zip(query_lens, seq_lens, strict=True)):
        if query_len == 0:
            continue
        start = starts[i]
        if own and query_len == seq_len:
            ki, vi = k[start : start + query_len], v[start : start + query_len]  # type: ignore[index]
        else:
            num_blocks = -(-seq_len // block_size)
            blocks = meta.block_tables[i, :num_blocks].long()
            ki = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
            vi = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
        q_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        if sliding_window is not None:
            mask &= k_pos[None, :] > q_pos[:, None] - sliding_window
        qi = q[start : start + query_len].transpose(0, 1)[None]  # [1, heads, query_len, d]
        oi = F.scaled_dot_product_attention(
            qi,
            ki.transpose(0, 1)[None].to(q.dtype),
            vi.transpose(0, 1)[None].to(q.dtype),
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
        out[start : start + query_len] = oi[0].transpose(0, 1)
    return out


def _fresh_batch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: int,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """`batch` prompts of one length L, nothing cached before them: causal attention of each
    over its own keys, one call for all."""
    length = len(q) // batch
    mask = None
    if sliding_window is not None:
        pos = torch.arange(length, device=q.device)
        mask = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - sliding_window)

    def heads_first(x: torch.Tensor) -> torch.Tensor:  # [B*L, h, d] -> [B, h, L, d]
        return x.view(batch, length, x.shape[1], x.shape[2]).transpose(1, 2).to(q.dtype)

    out = F.scaled_dot_product_attention(
        heads_first(q),
        heads_first(k),
        heads_first(v),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=True,
    )
    return out.transpose(1, 2).reshape(q.shape)


def _decode_plan(
    meta: AttentionMetadata, block_size: int, device: torch.device, sliding_window: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(slots [B, L]: the flat cache slot of each request's context position, L the longest
    context, shorter ones padded with other slots; mask [B, 1, 1, L], None where every
    position counts) of a decode step, built once and kept in meta.backend_cache."""
    key = f"torch_decode/{block_size}/{sliding_window}"
    plan = meta.backend_cache.get(key)
    if plan is None:
        seq_lens = torch.as_tensor(meta.seq_lens_cpu, dtype=torch.long)
        max_len = int(seq_lens.max())
        tables = meta.block_tables[:, : -(-max_len // block_size)].long()
        offsets = torch.arange(block_size, device=tables.device)
        slots = (tables[:, :, None] * block_size + offsets).reshape(len(tables), -1)
        slots = slots[:, :max_len].contiguous()
        mask = None  # contexts of one length, no window: nothing to mask
        if sliding_window is not None or int(seq_lens.min()) != max_len:
            k_pos = torch.arange(max_len)
            mask = k_pos[None, :] < seq_lens[:, None]  # the query sits at seq_len - 1
            if sliding_window is not None:
                mask &= k_pos[None, :] > seq_lens[:, None] - 1 - sliding_window
            mask = mask[:, None, None, :].to(device)
        plan = (slots, mask)
        meta.backend_cache[key] = plan
    return plan


def _decode_batch(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """One query token per request, all requests in one call (contexts padded and masked)."""
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    slots, mask = _decode_plan(meta, block_size, q.device, sliding_window)
    batch, num_heads, _ = q.shape
    group = num_heads // num_kv_heads
    flat = kv_cache.view(2, -1, num_kv_heads, head_dim)
    # index_select over rows of the flat cache: the same values as flat[:, slots], ~4x
    # faster on the CPU than advanced indexing with a 2-D index.
    kv = flat.index_select(1, slots.view(-1)).view(2, batch, -1, num_kv_heads, head_dim)
    kv = kv.transpose(2, 3).to(q.dtype)  # [2, B, kv_heads, L, d]
    out = F.scaled_dot_product_attention(
        q.reshape(batch, num_kv_heads, group, head_dim),  # a KV head's queries share its context
        kv[0],
        kv[1],
        attn_mask=mask,
        scale=scale,
    )
    return out.reshape(batch, num_heads, head_dim)
