"""LoRABatch: which of a step's tokens use which adapter slot, laid out for the grouped product.

Built once per step (by the model runner, through LoRAManager.begin_batch) and used by every
LoRA layer of the forward. The tokens that use an adapter are gathered in slot order into
`token_indices` (rows of the flattened batch), so each slot's tokens form one contiguous
segment, as in Punica's SGMV. Segments of up to SHORT_SEGMENT tokens (decodes, mostly) are
also laid out padded, [short segments, longest of them], so that one batched matmul covers
them all; longer ones (prefill chunks) are multiplied one by one. For the Triton kernels
(lora_triton.py) the segments are also cut into tiles of up to TILE_M tokens of one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SHORT_SEGMENT = 32  # tokens: segments up to this long go through the padded batched path
TILE_M = 16  # tokens per tile of the Triton kernels


@dataclass(slots=True)
class ShortSegments:
    """The short segments, padded to a common length L."""

    slots: torch.Tensor  # [G] long: the slot of each
    length: int  # L
    pad_rows: torch.Tensor  # [G * L] long: row of xs (adapter tokens) at each padded place, or N
    rows: torch.Tensor  # [M] long: rows of xs in short segments ...
    places: torch.Tensor  # [M] long: ... and their places in the padded layout


@dataclass(slots=True)
class LoRABatch:
    token_indices: torch.Tensor  # [N] long: rows of the batch using an adapter, by segment
    segments: list[tuple[int, int, int]]  # (start, end, slot) ranges of token_indices
    long_segments: list[tuple[int, int, int]]  # those longer than SHORT_SEGMENT
    short: ShortSegments | None
    # All segments as device tensors, for a kernel that takes them in one launch.
    seg_starts: torch.Tensor  # [G + 1] int32
    seg_slots: torch.Tensor  # [G] int32
    tiles: torch.Tensor  # [tiles, 3] int32: (start, end, slot), ranges of token_indices

    @property
    def num_tokens(self) -> int:
        return self.segments[-1][1]

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

        def tensor(values: list[int], dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        short = [s for s in segments if s[1] - s[0] <= SHORT_SEGMENT]
        long = [s for s in segments if s[1] - s[0] > SHORT_SEGMENT]
        padded = None
        if short:
            length = max(end - begin for begin, end, _ in short)
            pad_rows = [len(rows)] * (len(short) * length)
            short_rows, places = [], []
            for g, (begin, end, _) in enumerate(short):
                for j, row in enumerate(range(begin, end)):
                    pad_rows[g * length + j] = row
                    short_rows.append(row)
                    places.append(g * length + j)
            padded = ShortSegments(
                slots=tensor([s for _, _, s in short]),
                length=length,
                pad_rows=tensor(pad_rows),
                rows=tensor(short_rows),
                places=tensor(places),
            )
        tiles = [
            (first, min(first + TILE_M, end), slot)
            for begin, end, slot in segments
            for first in range(begin, end, TILE_M)
        ]
        return cls(
            token_indices=tensor(rows),
            segments=segments,
            long_segments=long,
            short=padded,
            seg_starts=tensor([s for s, _, _ in segments] + [len(rows)], torch.int32),
            seg_slots=tensor([s for _, _, s in segments], torch.int32),
            tiles=tensor([v for tile in tiles for v in tile], torch.int32).view(-1, 3),
        )
