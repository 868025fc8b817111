"""Grouped LoRA product in plain torch: one pair of matmuls per (adapter slot, part) in the batch.

In the manner of Punica's SGMV (segmented gather matrix-vector), S-LoRA and LoRAX: the batch's
tokens that use an adapter are grouped by device slot into contiguous segments (LoRABatch,
built once per step), and each segment is multiplied by its slot's stacked A and B. The loop
is over the distinct adapters of the step, never over requests or tokens. A CUDA kernel (one
launch over all segments, as Punica's) can replace `add_lora` with the same arguments.

Weights of one fused layer with P parts (q/k/v: 3; gate/up: 2; o, down: 1):
  a [slots, P, max_rank, in]   b [slots, out, max_rank]
Part p's output columns are [offsets[p], offsets[p+1]); only the first `ranks[slot]` rank
columns of a slot are used (the rest are zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class LoRABatch:
    """Which of a step's T tokens use which slot, grouped by slot."""

    token_indices: torch.Tensor  # [N] long: rows of the batch using an adapter, by segment
    segments: list[tuple[int, int, int]]  # (start, end, slot) ranges of token_indices
    # The same segments as device tensors, for kernels that take them in one launch.
    seg_starts: torch.Tensor  # [G + 1] int32
    seg_slots: torch.Tensor  # [G] int32

    @classmethod
    def build(
        cls, token_counts: list[int], slots: list[int | None], device: torch.device
    ) -> LoRABatch | None:
        """From each request's token count and slot (None: base model) in batch order;
        None when no token uses an adapter."""
        by_slot: dict[int, list[tuple[int, int]]] = {}
        start = 0
        for n, slot in zip(token_counts, slots, strict=True):
            if slot is not None and n:
                by_slot.setdefault(slot, []).append((start, n))
            start += n
        if not by_slot:
            return None
        rows: list[int] = []
        segments = []
        for slot in sorted(by_slot):
            begin = len(rows)
            for first, n in by_slot[slot]:
                rows.extend(range(first, first + n))
            segments.append((begin, len(rows), slot))
        starts = [s for s, _, _ in segments] + [len(rows)]
        return cls(
            token_indices=torch.tensor(rows, dtype=torch.long, device=device),
            segments=segments,
            seg_starts=torch.tensor(starts, dtype=torch.int32, device=device),
            seg_slots=torch.tensor([s for _, _, s in segments], dtype=torch.int32, device=device),
        )


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    offsets: tuple[int, ...],
    batch: LoRABatch,
    ranks: list[int],
    scalings: list[float],
    parts: list[tuple[int, ...]],
) -> None:
    """y[t] += scaling_s * B_{s,p} (A_{s,p} x[t]) for every token t of slot s and part p the
    slot's adapter changes, in place. Rows without an adapter are left untouched.

    y [T, out], x [T, in]; ranks, scalings and parts are per slot.
    """
    todo = [(start, end, slot) for start, end, slot in batch.segments if parts[slot]]
    if not todo:
        return
    num_parts, max_rank, in_features = a.shape[1:]
    xs = x.index_select(0, batch.token_indices)
    delta = torch.zeros(xs.shape[0], y.shape[1], dtype=y.dtype, device=y.device)
    for start, end, slot in todo:
        r = ranks[slot]
        # Shrink for every part at once (rank columns past r are zero), then expand per part.
        h = F.linear(xs[start:end], a[slot].view(num_parts * max_rank, in_features))
        h.mul_(scalings[slot])
        for p in parts[slot]:
            lo, hi = offsets[p], offsets[p + 1]
            h_p = h[:, p * max_rank : p * max_rank + r]
            delta[start:end, lo:hi] = F.linear(h_p, b[slot, lo:hi, :r])
    y.index_add_(0, batch.token_indices, delta)
