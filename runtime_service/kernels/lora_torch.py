"""Grouped LoRA product in plain torch, in the manner of Punica's SGMV, S-LoRA and LoRAX.

The step's tokens that use an adapter are grouped by device slot into contiguous segments
(lora_batch.py). Short segments (decodes) go through one padded batched matmul per
projection, whatever the number of adapters: x [G, L, in] against the G slots' stacked A and
B. Long segments (prefill chunks) are multiplied one by one, at their adapter's own rank. No
loop runs over requests or tokens, and rows without an adapter are never touched. A CUDA
kernel (one launch over all segments, as Punica's) can replace `add_lora`: LoRABatch carries
the segments as device tensors too.

Weights of one fused layer with P parts (q/k/v: 3; gate/up: 2; o, down: 1):
  a [slots, P, max_rank, in]   b [slots, out, max_rank]
Part p's output columns are [offsets[p], offsets[p+1]). A slot's rank columns past its
adapter's rank, and the parts its adapter leaves alone, are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from runtime_service.kernels.lora_batch import LoRABatch, ShortSegments


@dataclass(slots=True)
class SlotTable:
    """Per-slot facts the product needs."""

    ranks: list[int]
    scalings: list[float]
    scalings_tensor: torch.Tensor  # [slots] on the device, the same values
    parts: list[tuple[int, ...]]  # per slot: the parts of this fused layer its adapter changes


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    offsets: tuple[int, ...],
    batch: LoRABatch,
    table: SlotTable,
) -> None:
    """y[t] += scaling_s * B_{s,p} (A_{s,p} x[t]) for every token t of slot s and part p the
    slot's adapter changes, in place. y [T, out], x [T, in]. (LoRALinear skips the call when
    no adapter of the batch changes the layer.)"""
    xs = x.index_select(0, batch.token_indices)
    delta = torch.zeros(xs.shape[0], y.shape[1], dtype=y.dtype, device=y.device)
    num_parts, max_rank, in_features = a.shape[1:]
    for start, end, slot in batch.long_segments:
        r = table.ranks[slot]
        # Shrink for every part at once (rank columns past r are zero), expand per part.
        h = F.linear(xs[start:end], a[slot].view(num_parts * max_rank, in_features))
        h.mul_(table.scalings[slot])
        for p in table.parts[slot]:
            lo, hi = offsets[p], offsets[p + 1]
            h_p = h[:, p * max_rank : p * max_rank + r]
            delta[start:end, lo:hi] = F.linear(h_p, b[slot, lo:hi, :r])
    if batch.short is not None:
        _add_short(delta, xs, a, b, offsets, batch.short, table)
    y.index_add_(0, batch.token_indices, delta)


def _add_short(
    delta: torch.Tensor,
    xs: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    offsets: tuple[int, ...],
    short: ShortSegments,
    table: SlotTable,
) -> None:
    """The short segments, padded to [G, L]: a fixed number of batched matmuls (at the
    slots' full rank: the extra columns are zero)."""
    num_parts, max_rank, in_features = a.shape[1:]
    g, length = short.slots.shape[0], short.length
    padded = torch.cat([xs, xs.new_zeros(1, in_features)]).index_select(0, short.pad_rows)
    a_g = a.index_select(0, short.slots).view(g, num_parts * max_rank, in_features)
    h = torch.bmm(padded.view(g, length, in_features), a_g.transpose(1, 2))  # [G, L, P * R]
    h.mul_(table.scalings_tensor.index_select(0, short.slots).view(g, 1, 1))
    b_g = b.index_select(0, short.slots)  # [G, out, R]
    out = torch.empty(g, length, delta.shape[1], dtype=delta.dtype, device=delta.device)
    for p in range(num_parts):
        lo, hi = offsets[p], offsets[p + 1]
        h_p = h[:, :, p * max_rank : (p + 1) * max_rank]
        out[:, :, lo:hi] = torch.bmm(h_p, b_g[:, lo:hi].transpose(1, 2))
    flat = out.view(g * length, delta.shape[1])
    delta.index_copy_(0, short.rows, flat.index_select(0, short.places))
