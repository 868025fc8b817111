"""Grouped LoRA product in Triton: one shrink launch and one expand launch per part, for all
adapters of the step at once (Punica's SGMV idea; the plain-torch version is lora_torch.py).

The step's adapter tokens are grouped by slot into segments (lora_batch.py), cut into tiles of
TILE_M tokens of one slot each. Shrink: one program per tile computes
h[tile] = scaling_s * x[tile] A_s^T for every part at once ([TILE_M, parts * max_rank], fp32),
reading the slot's A in place: no per-layer gather of weights, no loop over adapters. Expand:
one program per (tile, range of output columns of a part) adds h_p B_{s,p}^T straight into the
rows of y the tile's tokens came from. Rank columns past an adapter's rank and the parts it
leaves alone hold zeros in the slot, so every slot is computed the same way.

Split K: a decode step has few tiles (one per adapter of the batch, ~32), too few programs to
read the A weights at the copy rate, so the shrink also splits the input features into
SPLITS ranges (of 512 features for 4,096, 1,792 for 14,336), one program each, writing
partial sums h[split]; the expand adds the splits up (in a fixed order: the result does not
depend on scheduling), once per program of N_BLOCKS x BLOCK_N output columns. The split is
a constant of the layer, so one compiled kernel serves every batch size (and Triton's
interpreter, which needs constant loop bounds, runs it).

Tiles with no tokens (the padding of a CUDA graph's fixed table, lora_tables.py) return at
once. Nothing here reads a value on the host, so the launches can be captured in a graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime_service.kernels.lora_batch import TILE_M, LoRABatch
from runtime_service.kernels.lora_tables import StaticLoRABatch

BLOCK_K = 64  # shrink: input features per step of the reduction
BLOCK_N = 128  # expand: output columns per block ...
N_BLOCKS = 4  # ... and blocks per program (the splits of h are added once for them all)
SPLITS = 8  # shrink: ranges of the input features (a layer constant: one compiled kernel)


@triton.jit
def _tile(tiles_ptr, rows_ptr, start, end, TILE: tl.constexpr):
    """This program's tile: its places in token_indices, which of them are real, the rows of
    the batch they are, and the tile's slot."""
    slot = tl.load(tiles_ptr + tl.program_id(0) * 3 + 2).to(tl.int64)
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
    stride_h_split,
    stride_h,
    IN_FEATURES: tl.constexpr,  # a model constant: a constexpr bound for the reduction
    K_CHUNK: tl.constexpr,  # input features per split (a multiple of BLOCK_K)
    TILE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    start = tl.load(tiles_ptr + tl.program_id(0) * 3)
    end = tl.load(tiles_ptr + tl.program_id(0) * 3 + 1)
    if end <= start:
        return
    m, m_ok, rows, slot = _tile(tiles_ptr, rows_ptr, start, end, TILE)
    r = tl.arange(0, BLOCK_R)
    r_ok = r < width
    split = tl.program_id(1)
    acc = tl.zeros([TILE, BLOCK_R], dtype=tl.float32)
    for k0 in range(0, K_CHUNK, BLOCK_K):
        k = split * K_CHUNK + k0 + tl.arange(0, BLOCK_K)
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
    out = h_ptr + split * stride_h_split + m[:, None] * stride_h + r[None, :]
    tl.store(out, acc, mask=m_ok[:, None] & r_ok[None, :])


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
    stride_h_split,
    stride_h,
    stride_b_slot,
    stride_b_row,
    stride_y,
    NUM_SPLITS: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    N_BLOCKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    start = tl.load(tiles_ptr + tl.program_id(0) * 3)
    end = tl.load(tiles_ptr + tl.program_id(0) * 3 + 1)
    if end <= start:
        return
    m, m_ok, rows, slot = _tile(tiles_ptr, rows_ptr, start, end, TILE)
    r = tl.arange(0, BLOCK_R)
    r_ok = r < rank
    h_at = h_ptr + m[:, None] * stride_h + h_offset + r[None, :]
    h_ok = m_ok[:, None] & r_ok[None, :]
    ht = tl.load(h_at, mask=h_ok, other=0.0)
    for split in tl.static_range(1, NUM_SPLITS):  # the shrink's partial sums, in order
        ht += tl.load(h_at + split * stride_h_split, mask=h_ok, other=0.0)
    ht = ht.to(b_ptr.dtype.element_ty)
    for j in tl.static_range(N_BLOCKS):
        n = col_offset + (tl.program_id(1) * N_BLOCKS + j) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < col_offset + num_cols
        bt = tl.load(  # [BLOCK_R, BLOCK_N]: B_s's rows of this part, transposed
            b_ptr + slot * stride_b_slot + n[None, :] * stride_b_row + r[:, None],
            mask=r_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        delta = tl.dot(ht, bt, input_precision=DOT_PRECISION)
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
    batch: LoRABatch | StaticLoRABatch,
    scalings: torch.Tensor,
    k_chunk: int | None = None,
) -> None:
    """y[t] += scaling_s * B_s (A_s x[t]) for every adapter token t of slot s, in place.
    y [T, out], x [T, in], a [slots, parts, max_rank, in], b [slots, out, max_rank],
    scalings [slots] (0 for an empty slot). `k_chunk`: input features per split of the
    shrink (a multiple of BLOCK_K; default: what makes SPLITS ranges)."""
    num_parts, max_rank, in_features = a.shape[1:]
    width = num_parts * max_rank
    x, y_ = x.contiguous(), y
    assert y_.is_contiguous() and a.is_contiguous() and b.is_contiguous()
    if k_chunk is None:
        k_chunk = triton.cdiv(triton.cdiv(in_features, SPLITS), BLOCK_K) * BLOCK_K
    assert k_chunk % BLOCK_K == 0
    num_tiles = batch.tiles.shape[0]
    splits = triton.cdiv(in_features, k_chunk)
    h = torch.empty(splits, batch.num_tokens, width, dtype=torch.float32, device=x.device)
    precision = "ieee" if x.dtype == torch.float32 else None
    _shrink[(num_tiles, splits)](
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
        h.stride(1),
        IN_FEATURES=in_features,
        K_CHUNK=k_chunk,
        TILE=TILE_M,
        BLOCK_R=_block(width),
        BLOCK_K=BLOCK_K,
        DOT_PRECISION=precision,
    )
    for p in range(num_parts):
        lo, hi = offsets[p], offsets[p + 1]
        _expand[(num_tiles, triton.cdiv(hi - lo, BLOCK_N * N_BLOCKS))](
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
            h.stride(1),
            b.stride(0),
            b.stride(1),
            y_.stride(0),
            NUM_SPLITS=splits,
            TILE=TILE_M,
            BLOCK_R=_block(max_rank),
            BLOCK_N=BLOCK_N,
            N_BLOCKS=N_BLOCKS,
            DOT_PRECISION=precision,
        )
