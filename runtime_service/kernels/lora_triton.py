"""Grouped LoRA product in Triton: one shrink launch and one expand launch per part, for all
adapters of the step at once (Punica's SGMV idea; the plain-torch version is lora_torch.py).

The step's adapter tokens are grouped by slot into segments (lora_batch.py), cut into tiles of
TILE_M tokens of one slot each. Shrink: one program per tile computes
h[tile] = scaling_s * x[tile] A_s^T for every part at once ([TILE_M, parts * max_rank], fp32),
reading the slot's A in place: no per-layer gather of weights, no loop over adapters. Expand:
one program per (tile, block of output columns of a part) adds h_p B_{s,p}^T straight into the
rows of y the tile's tokens came from. Rank columns past an adapter's rank and the parts it
leaves alone hold zeros in the slot, so every slot is computed the same way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.kernels.lora_batch import TILE_M, LoRABatch

BLOCK_K = 64  # shrink: input features per step of the reduction
BLOCK_N = 64  # expand: output columns per program


@triton.jit
def _tile(tiles_ptr, rows_ptr, TILE: tl.constexpr):
    """This program's tile: its places in token_indices, which of them are real, the rows of
    the batch they are, and the tile's slot."""
    tile = tl.program_id(0)
    start = tl.load(tiles_ptr + tile * 3)
    end = tl.load(tiles_ptr + tile * 3 + 1)
    slot = tl.load(tiles_ptr + tile * 3 + 2).to(tl.int64)
    m = start + tl.arange(0, TILE)
    m_ok = m < end
    rows = tl.load(rows_ptr + m, mask=m_ok, other=0).to(tl.int64)
    return m, m_ok, rows, slot


@triton.jit
def _shrink(
    x_ptr,
    rows_ptr,
    tiles_ptr,
    a_ptr,
    scalings_ptr,
    h_ptr,
    width,  # parts * max_rank: the columns of h
    stride_x,
    stride_a_slot,
    stride_a_row,
    stride_h,
    IN_FEATURES: tl.constexpr,  # a model constant: a constexpr bound for the reduction
    TILE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    m, m_ok, rows, slot = _tile(tiles_ptr, rows_ptr, TILE)
    r = tl.arange(0, BLOCK_R)
    r_ok = r < width
    acc = tl.zeros([TILE, BLOCK_R], dtype=tl.float32)
    for k0 in range(0, IN_FEATURES, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < IN_FEATURES
        xt = tl.load(
            x_ptr + rows[:, None] * stride_x + k[None, :],
            mask=m_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        at = tl.load(  # [BLOCK_K, BLOCK_R]: A_s transposed
            a_ptr + slot * stride_a_slot + r[None, :] * stride_a_row + k[:, None],
            mask=r_ok[None, :] & k_ok[:, None],
            other=0.0,
        )
        acc += tl.dot(xt, at, input_precision=DOT_PRECISION)
    acc *= tl.load(scalings_ptr + slot).to(tl.float32)
    tl.store(h_ptr + m[:, None] * stride_h + r[None, :], acc, mask=m_ok[:, None] & r_ok[None, :])


@triton.jit
def _expand(
    h_ptr,
    rows_ptr,
    tiles_ptr,
    b_ptr,
    y_ptr,
    rank,  # max_rank: the columns of h of one part
    h_offset,  # part * max_rank
    col_offset,  # the part's first output column
    num_cols,  # the part's output columns
    stride_h,
    stride_b_slot,
    stride_b_row,
    stride_y,
    TILE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    m, m_ok, rows, slot = _tile(tiles_ptr, rows_ptr, TILE)
    r = tl.arange(0, BLOCK_R)
    r_ok = r < rank
    n = col_offset + tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < col_offset + num_cols
    ht = tl.load(
        h_ptr + m[:, None] * stride_h + h_offset + r[None, :],
        mask=m_ok[:, None] & r_ok[None, :],
        other=0.0,
    )
    bt = tl.load(  # [BLOCK_R, BLOCK_N]: B_s's rows of this part, transposed
        b_ptr + slot * stride_b_slot + n[None, :] * stride_b_row + r[:, None],
        mask=r_ok[:, None] & n_ok[None, :],
        other=0.0,
    )
    delta = tl.dot(ht.to(bt.dtype), bt, input_precision=DOT_PRECISION)
    out = y_ptr + rows[:, None] * stride_y + n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    y = tl.load(out, mask=mask, other=0.0)
    tl.store(out, (y.to(tl.float32) + delta).to(y.dtype), mask=mask)


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot needs 16 or more


def add_lora_triton(
    y: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    offsets: tuple[int, ...],
    batch: LoRABatch,
    scalings: torch.Tensor,
) -> None:
    """y[t] += scaling_s * B_s (A_s x[t]) for every adapter token t of slot s, in place.
    y [T, out], x [T, in], a [slots, parts, max_rank, in], b [slots, out, max_rank],
    scalings [slots] (0 for an empty slot)."""
    num_parts, max_rank, in_features = a.shape[1:]
    width = num_parts * max_rank
    x, y_ = x.contiguous(), y
    assert y_.is_contiguous() and a.is_contiguous() and b.is_contiguous()
    h = torch.empty(batch.num_tokens, width, dtype=torch.float32, device=x.device)
    precision = "ieee" if x.dtype == torch.float32 else None
    num_tiles = batch.tiles.shape[0]
    _shrink[(num_tiles,)](
        x,
        batch.token_indices,
        batch.tiles,
        a,
        scalings,
        h,
        width,
        x.stride(0),
        a.stride(0),
        a.stride(2),
        h.stride(0),
        IN_FEATURES=in_features,
        TILE=TILE_M,
        BLOCK_R=_block(width),
        BLOCK_K=BLOCK_K,
        DOT_PRECISION=precision,
    )
    for p in range(num_parts):
        lo, hi = offsets[p], offsets[p + 1]
        _expand[(num_tiles, triton.cdiv(hi - lo, BLOCK_N))](
            h,
            batch.token_indices,
            batch.tiles,
            b,
            y_,
            max_rank,
            p * max_rank,
            lo,
            hi - lo,
            h.stride(0),
            b.stride(0),
            b.stride(1),
            y_.stride(0),
            TILE=TILE_M,
            BLOCK_R=_block(max_rank),
            BLOCK_N=BLOCK_N,
            DOT_PRECISION=precision,
        )
