"""LoRA tables at fixed addresses, for decode steps replayed as CUDA graphs.

A captured graph launches the grouped LoRA kernels (lora_triton.py) with the grid, pointers
and sizes it had at capture, so everything that varies per step lives in persistent device
buffers that each step overwrites before the replay:

  rows  [capacity] int32: the batch rows using an adapter, grouped by slot (as LoRABatch's
        token_indices); places past the step's adapter tokens are never read.
  tiles [max_tiles(capacity, slots), 3] int32: (start, end, slot) ranges of `rows`, as
        LoRABatch's tiles, then empty tiles (0, 0, 0) up to the fixed count: their programs
        return at once.

A graph of padded batch size B reads the first B rows and the first max_tiles(B) tiles; rows
without an adapter (base-model requests, padding rows) are in no tile, so the kernels never
touch them. `group_tokens` builds the same layout as LoRABatch.build, vectorized, on the host;
LoRAGraphTables keeps the pinned host mirror and the device buffers and copies one to the
other in a single transfer per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from runtime_service.kernels.lora_batch import TILE_M

NO_ADAPTER = -1  # a request's slot when it uses the base model


def max_tiles(num_tokens: int, num_slots: int) -> int:
    """The most tiles `num_tokens` adapter tokens of up to `num_slots` slots can need: each
    slot's segment of n tokens takes ceil(n / TILE_M) <= n // TILE_M + 1 tiles."""
    return num_tokens // TILE_M + min(num_slots, num_tokens)


def group_tokens(counts: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, tiles) of a step whose request i has counts[i] tokens and uses slots[i]
    (NO_ADAPTER: none): the rows of the flattened batch using an adapter, stable-sorted by
    slot, and the [tiles, 3] (start, end, slot) table over them; LoRABatch.build's layout."""
    token_slots = np.repeat(slots.astype(np.int64), counts)
    rows = np.flatnonzero(token_slots != NO_ADAPTER)
    rows = rows[np.argsort(token_slots[rows], kind="stable")]
    n = len(rows)
    if n == 0:
        return rows.astype(np.int32), np.zeros((0, 3), dtype=np.int32)
    row_slots = token_slots[rows]
    cut = np.flatnonzero(row_slots[1:] != row_slots[:-1]) + 1
    starts = np.concatenate(([0], cut))
    ends = np.concatenate((cut, [n]))
    per = -(-(ends - starts) // TILE_M)  # tiles per segment
    seg = np.repeat(np.arange(len(starts)), per)
    first = np.repeat(np.cumsum(per) - per, per)
    tile_starts = starts[seg] + (np.arange(len(seg)) - first) * TILE_M
    tiles = np.stack(
        [tile_starts, np.minimum(tile_starts + TILE_M, ends[seg]), row_slots[starts][seg]], axis=1
    )
    return rows.astype(np.int32), tiles.astype(np.int32)


@dataclass(slots=True)
class StaticLoRABatch:
    """What the kernels read in a captured graph: views of LoRAGraphTables' device buffers,
    sized for a graph of `num_tokens` rows (the kernels' grid is `tiles.shape[0]`)."""

    token_indices: torch.Tensor  # [num_tokens] int32
    tiles: torch.Tensor  # [max_tiles(num_tokens, slots), 3] int32
    num_tokens: int


class LoRAGraphTables:
    """The persistent rows/tiles buffers of up to `capacity` rows over `num_slots` slots."""

    def __init__(self, capacity: int, num_slots: int, device: torch.device) -> None:
        self.capacity = capacity
        self.num_slots = num_slots
        self.device = device
        self.num_tiles = max_tiles(capacity, num_slots)
        size = capacity + 3 * self.num_tiles
        pin = device.type == "cuda"
        self._host = torch.zeros(size, dtype=torch.int32, pin_memory=pin)
        same = device.type != "cuda"
        self._dev = self._host if same else torch.zeros(size, dtype=torch.int32, device=device)
        self.h_rows = self._host.numpy()[:capacity]
        self.h_tiles = self._host.numpy()[capacity:].reshape(self.num_tiles, 3)
        # Recorded after each copy: the next fill waits for it before writing the pinned
        # mirror (with async scheduling the previous copy may still be queued).
        self._copied: torch.cuda.Event | None = None

    def batch(self, size: int) -> StaticLoRABatch:
        """The device views a graph of `size` rows reads."""
        cap, n = self.capacity, max_tiles(size, self.num_slots)
        tiles = self._dev[cap : cap + 3 * self.num_tiles].view(self.num_tiles, 3)
        return StaticLoRABatch(self._dev[:size], tiles[:n], size)

    def clear(self) -> None:
        """No adapter tokens: every tile empty (what a capture's warm-up runs)."""
        self._wait()
        self.h_tiles[:] = 0
        self._send(self.num_tiles)

    def fill(self, counts: np.ndarray, slots: np.ndarray, size: int) -> None:
        """Writes a step's tables for a graph of `size` rows (counts: tokens per request,
        slots: each request's slot or NO_ADAPTER); one host-to-device copy, no sync."""
        rows, tiles = group_tokens(counts, slots)
        if len(rows) > size:
            raise ValueError(f"{len(rows)} adapter tokens do not fit a graph of {size} rows")
        self._wait()
        n = max_tiles(size, self.num_slots)
        self.h_rows[: len(rows)] = rows
        self.h_tiles[: len(tiles)] = tiles
        self.h_tiles[len(tiles) : n] = 0
        self._send(n)

    def _wait(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()

    def _send(self, num_tiles: int) -> None:
        if self.device.type != "cuda":
            return  # the host arrays are the buffers
        end = self.capacity + 3 * num_tiles  # rows and the tiles a graph reads: one copy
        self._dev[:end].copy_(self._host[:end], non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
