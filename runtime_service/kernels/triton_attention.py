"""Paged attention in Triton: prefill chunks and decodes of a mixed batch in one launch.

One program computes BLOCK_Q query tokens of one request for one KV head, with all the query
heads that share that KV head packed into the tile's rows (GQA), so each K/V tile is loaded
once for the whole group. It walks the request's context in tiles of TILE_N positions,
gathering each position's slot through the block table, with an online softmax (flash
attention). Causal and sliding-window masks come from absolute positions: query token t of
a request with L tokens in the cache and q new ones sits at position L - q + t.

The grid is flat over (query tile, KV head): a host-built table maps each query tile to its
request, so decodes (one tile each) and long prefills (many tiles) share a launch without
idle programs. A CUDA graph of a mixed batch (cuda_graphs.py) launches a fixed grid over a
tile table padded to its largest size: a device count of the valid tiles makes the others
do nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
import triton
import triton.language as tl

from runtime_service.kernels.attention_tiles import prefill_block_q, tile_table

if TYPE_CHECKING:
    from runtime_service.models.attention import AttentionMetadata

# Read once, when @triton.jit reads it too (it decides interpretation at decoration time).
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _attend_tile(
    n,
    q,
    q_pos,
    seq,
    kv_head,
    last_pos,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    scale,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    dims,
    dim_ok,
    m_i,
    l_i,
    acc,
    TILE_N: tl.constexpr,
    KV_BLOCK_SIZE: tl.constexpr,
    SLIDING_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One online-softmax update over context positions [n * TILE_N, (n + 1) * TILE_N)."""
    k_pos = n * TILE_N + tl.arange(0, TILE_N)
    col_ok = k_pos < last_pos
    block = tl.load(
        block_tables_ptr + seq * stride_bt + k_pos // KV_BLOCK_SIZE, mask=col_ok, other=0
    )
    slot = block.to(tl.int64) * stride_cb + (k_pos % KV_BLOCK_SIZE) * stride_cs
    kv_offsets = slot[:, None] + kv_head * stride_ch + dims[None, :]
    kv_mask = col_ok[:, None] & dim_ok[None, :]
    k = tl.load(k_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION).to(tl.float32) * scale
    visible = (k_pos[None, :] <= q_pos[:, None]) & col_ok[None, :]
    if SLIDING_WINDOW > 0:
        visible = visible & (k_pos[None, :] > q_pos[:, None] - SLIDING_WINDOW)
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION).to(
        tl.float32
    )
    return m_new, l_i, acc


@triton.jit
def _attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_ptr,
    tile_seq_ptr,
    tile_index_ptr,
    num_valid_ptr,
    scale,
    stride_qt,
    stride_qh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    stride_ot,
    stride_oh,
    part_acc_ptr,
    part_ml_ptr,
    QUERIES_PER_KV: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr,
    KV_BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    SLIDING_WINDOW: tl.constexpr,
    INTERPRETED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    SPLITS: tl.constexpr,
    PADDED_TILES: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = tl.load(tile_seq_ptr + tile)
    q_tile = tl.load(tile_index_ptr + tile)
    valid = True
    if PADDED_TILES:  # a tile beyond the valid count: no queries, so no context to walk
        valid = tile < tl.load(num_valid_ptr)
        seq = tl.where(valid, seq, 0)
        q_tile = tl.where(valid, q_tile, 0)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.where(valid, tl.load(query_start_ptr + seq + 1) - q_start, 0)
    seq_len = tl.where(valid, tl.load(seq_lens_ptr + seq), 0)
    context_len = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    q_tok = q_tile * BLOCK_Q + rows // QUERIES_PER_KV
    q_head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    row_ok = (rows < BLOCK_Q * QUERIES_PER_KV) & (q_tok < q_len)
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_ok = dims < HEAD_DIM

    q_offsets = (q_start + q_tok)[:, None] * stride_qt + q_head[:, None] * stride_qh
    q = tl.load(
        q_ptr + q_offsets + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0
    )
    q_pos = context_len + q_tok

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    last_pos = tl.minimum(context_len + (q_tile + 1) * BLOCK_Q, seq_len)  # exclusive
    first_pos = 0
    if SLIDING_WINDOW > 0:
        first_pos = tl.maximum(context_len + q_tile * BLOCK_Q - SLIDING_WINDOW + 1, 0)
    first_tile = first_pos // TILE_N
    num_tiles = tl.cdiv(last_pos, TILE_N)
    if SPLITS > 1:  # this program's share of the context tiles (split-K, flash-decoding)
        per_split = tl.cdiv(num_tiles - first_tile, SPLITS)
        first_tile = first_tile + split * per_split
        num_tiles = tl.minimum(first_tile + per_split, num_tiles)
    if INTERPRETED:  # Triton's interpreter cannot bound a `for` by a loaded value
        n = first_tile
        while n < num_tiles:
            m_i, l_i, acc = _attend_tile(
                n,
                q,
                q_pos,
                seq,
                kv_head,
                last_pos,
                k_cache_ptr,
                v_cache_ptr,
                block_tables_ptr,
                scale,
                stride_cb,
                stride_cs,
                stride_ch,
                stride_bt,
                dims,
                dim_ok,
                m_i,
                l_i,
                acc,
                TILE_N,
                KV_BLOCK_SIZE,
                SLIDING_WINDOW,
                DOT_PRECISION,
            )
            n += 1
    else:
        for n in range(first_tile, num_tiles):
            m_i, l_i, acc = _attend_tile(
                n,
                q,
                q_pos,
                seq,
                kv_head,
                last_pos,
                k_cache_ptr,
                v_cache_ptr,
                block_tables_ptr,
                scale,
                stride_cb,
                stride_cs,
                stride_ch,
                stride_bt,
                dims,
                dim_ok,
                m_i,
                l_i,
                acc,
                TILE_N,
                KV_BLOCK_SIZE,
                SLIDING_WINDOW,
                DOT_PRECISION,
            )

    if SPLITS > 1:  # partial results, combined by _combine_kernel
        part = ((q_start + q_tok) * (QUERIES_PER_KV * tl.num_programs(1)) + q_head) * SPLITS + split
        ok = row_ok[:, None] & dim_ok[None, :]
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM_PAD + dims[None, :], acc, mask=ok)
        tl.store(part_ml_ptr + part * 2, m_i, mask=row_ok)
        tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=row_ok)
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_offsets = (q_start + q_tok)[:, None] * stride_ot + q_head[:, None] * stride_oh
        tl.store(
            out_ptr + o_offsets + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & dim_ok[None, :],
        )


@triton.jit
def _combine_kernel(
    part_acc_ptr,
    part_ml_ptr,
    out_ptr,
    num_heads,
    stride_ot,
    stride_oh,
    SPLITS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
):
    """out[t, h] from the SPLITS partial (acc, max, sum) of one query token and head."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    base = (t * num_heads + h) * SPLITS
    splits = tl.arange(0, SPLITS)
    dims = tl.arange(0, HEAD_DIM_PAD)
    m = tl.load(part_ml_ptr + (base + splits) * 2)
    l_part = tl.load(part_ml_ptr + (base + splits) * 2 + 1)
    m_all = tl.max(m, axis=0)
    m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    w = tl.exp(m - m_safe)
    acc = tl.load(part_acc_ptr + (base + splits)[:, None] * HEAD_DIM_PAD + dims[None, :])
    total = tl.sum(w * l_part, axis=0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(
        out_ptr + t * stride_ot + h * stride_oh + dims,
        out.to(out_ptr.dtype.element_ty),
        mask=dims < HEAD_DIM,
    )


def num_splits(num_programs: int, device: torch.device) -> int:
    """Context splits for a decode batch of `num_programs` (request, KV head) programs: enough
    to give every multiprocessor about two, at most 16."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return int(min(16, max(1, triton.next_power_of_2(-(-2 * sms // max(num_programs, 1))))))


def _tiles(query_lens, block_q: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    both = torch.from_numpy(np.stack(tile_table(query_lens, block_q))).to(device, non_blocking=True)
    return both[0], both[1]


def paged_attention_triton(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
    splits: int | None = None,
) -> torch.Tensor:
    """q [T, num_heads, head_dim] -> out of the same shape (see module docstring). A decode
    batch splits each context in `splits` parts (default: by the GPU's size) and combines."""
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    num_heads = q.shape[1]
    per_kv = num_heads // num_kv_heads
    # Decode-only batches use one query token per tile; prefills pack more.
    block_q = 1 if meta.max_query_len == 1 else prefill_block_q(num_heads, num_kv_heads)
    block_m = max(16, triton.next_power_of_2(block_q * per_kv))
    key = f"tiles/{block_q}"
    if key not in meta.backend_cache:  # once per step, not once per layer
        meta.backend_cache[key] = _tiles(meta.query_lens_cpu, block_q, q.device)
    # A padded table (a mixed batch's graph) comes with a device count of its valid tiles.
    tile_seq, tile_index, *num_valid = meta.backend_cache[key]
    out = torch.empty_like(q)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    num_tiles = tile_seq.numel()
    if block_q > 1:
        splits = 1
    elif splits is None:
        splits = num_splits(num_tiles * num_kv_heads, q.device)
    head_dim_pad = triton.next_power_of_2(max(head_dim, 16))
    part_acc = part_ml = out  # unused without splits
    if splits > 1:
        part_acc = torch.empty(
            (q.shape[0], num_heads, splits, head_dim_pad), dtype=torch.float32, device=q.device
        )
        part_ml = torch.empty(
            (q.shape[0], num_heads, splits, 2), dtype=torch.float32, device=q.device
        )
    grid = (num_tiles, num_kv_heads, splits)
    _attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        meta.block_tables,
        meta.seq_lens,
        meta.query_start_loc,
        tile_seq,
        tile_index,
        num_valid[0] if num_valid else tile_seq,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        meta.block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        part_acc,
        part_ml,
        QUERIES_PER_KV=per_kv,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        TILE_N=max(16, min(64, block_size * 4)),
        KV_BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        SLIDING_WINDOW=sliding_window or 0,
        INTERPRETED=_INTERPRETED,
        # float32 engines get float32 dots (parity with transformers), not tf32.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,
        SPLITS=splits,
        PADDED_TILES=bool(num_valid),
    )
    if splits > 1:
        _combine_kernel[(q.shape[0], num_heads)](
            part_acc,
            part_ml,
            out,
            num_heads,
            out.stride(0),
            out.stride(1),
            SPLITS=splits,
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=head_dim_pad,
        )
    return out
