"""StepGraphs: a step's forward (embedding to final norm) as CUDA graphs.

A step launches ~1,200 small kernels; replayed as one graph it costs the GPU time alone.
Decode graphs: one per padded batch size (1, 2, 4, 8, then steps of 16 up to 256, then of
64); a decode-only batch of B requests runs the graph of the smallest size >= B, with the
padding rows StepInputs describes. Mixed graphs: one per padded token count (16 to 1,024),
for batches with prefill chunks; their attention walks a tile table padded to the most tiles
that many tokens can need, with a device count of the valid ones (triton_attention.py).
Larger steps are compute-bound, so they and steps with LoRA tokens run eagerly. Graphs are
captured at start-up, largest first so that all share one memory pool. The LM head and the
sampler run after the graph, on the rows that sample (a static logits tensor per graph would
hold gigabytes).

An engine with LoRA captures a second decode graph per size, with the grouped LoRA kernels
in every layer reading the fixed-address tables of kernels/lora_tables.py (which rows use
which slot) and the slot tensors (filled in place when an adapter is loaded): a decode step
with adapter tokens replays it, whatever mix of adapters it has. Steps without adapter
tokens keep the graphs without LoRA (no LoRA launches at all); steps with prefills and
adapter tokens run eagerly. All sets share one memory pool (a step replays one graph), so a
set costs its capture time and the graphs' own nodes, not a second copy of the activations.

NOTE: a graph reads the runner's StepInputs device buffers and the KV cache tensors at the
addresses they had at capture, and writes its hidden states to a static tensor: both must live as
long as the graphs, and nothing may reallocate them.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from runtime_service.engine.step_inputs import StepInputs
from runtime_service.kernels.attention_tiles import max_tiles
from runtime_service.models.attention import AttentionMetadata

if TYPE_CHECKING:
    from runtime_service.kernels.lora_tables import LoRAGraphTables
    from runtime_service.models.lora import LoRASlots

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]


def graph_sizes(max_size: int) -> list[int]:
    sizes = [1, 2, 4, 8, *list(range(16, 257, 16)), *list(range(320, 1025, 64))]
    return [s for s in sizes if s <= max_size]


def mixed_sizes(max_tokens: int) -> list[int]:
    """Token counts of the mixed graphs: finer where a step is bound by its weight reads."""
    sizes = [16, 32, 64, *list(range(128, 513, 64)), *list(range(640, 1025, 128))]
    return [s for s in sizes if s <= max_tokens]


def decode_metadata(inputs: StepInputs, size: int) -> AttentionMetadata:
    """Metadata over the first `size` rows of the buffers, as a decode batch."""
    device = inputs.device
    ones = np.ones(size, dtype=np.int64)
    meta = AttentionMetadata(
        slot_mapping=inputs.slot_mapping[:size],
        block_tables=inputs.block_tables[:size],
        query_start_loc=inputs.query_start_loc[: size + 1],
        seq_lens=inputs.seq_lens[:size],
        query_lens_cpu=ones,
        seq_lens_cpu=ones,
    )
    # The attention kernel's tile table of a decode batch: tile i is query 0 of request i.
    meta.backend_cache["tiles/1"] = (
        torch.arange(size, dtype=torch.int32, device=device),
        torch.zeros(size, dtype=torch.int32, device=device),
    )
    return meta


def mixed_metadata(inputs: StepInputs, size: int) -> AttentionMetadata:
    """Metadata of a batch with prefills over the first `size` tokens of the buffers, all
    requests' rows, and the tile table padded to the most tiles `size` tokens can need."""
    assert inputs.block_q is not None
    seqs = inputs.max_num_seqs
    tiles = max_tiles(size, seqs, inputs.block_q)
    meta = AttentionMetadata(
        slot_mapping=inputs.slot_mapping[:size],
        block_tables=inputs.block_tables[:seqs],
        query_start_loc=inputs.query_start_loc[: seqs + 1],
        seq_lens=inputs.seq_lens[:seqs],
        query_lens_cpu=np.array([size]),  # > 1: the kernel's prefill tiles
        seq_lens_cpu=np.array([size]),
    )
    meta.backend_cache[f"tiles/{inputs.block_q}"] = (
        inputs.tile_seq[:tiles],
        inputs.tile_index[:tiles],
        inputs.num_tiles,
    )
    return meta


def _smallest(sizes: list[int], n: int) -> int | None:
    return next((size for size in sizes if size >= n), None)


class StepGraphs:
    def __init__(
        self,
        inputs: StepInputs,
        forward: Forward,
        max_size: int,
        max_mixed_tokens: int = 0,
        lora: tuple[LoRASlots, LoRAGraphTables] | None = None,
    ) -> None:
        self.inputs = inputs
        self.forward = forward
        self.sizes = graph_sizes(max_size)
        self.mixed = mixed_sizes(max_mixed_tokens) if inputs.block_q is not None else []
        self.lora = lora
        # Keyed by (kind, rows or tokens): kind "decode", "decode+lora" or "mixed".
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.hidden: dict[tuple[str, int], torch.Tensor] = {}
        self.metas: dict[tuple[str, int], AttentionMetadata] = {}
        self.replays: Counter[str] = Counter()  # by kind, for tests and benches
        self.capture_seconds: Counter[str] = Counter()  # by kind
        self.memory_bytes = 0

    @property
    def num_replays(self) -> dict[bool, int]:
        """Decode replays without and with LoRA."""
        return {False: self.replays["decode"], True: self.replays["decode+lora"]}

    def size_for(self, num_reqs: int) -> int | None:
        """The captured size a decode batch of `num_reqs` runs at (None: too large)."""
        return _smallest(self.sizes, num_reqs)

    def mixed_size_for(self, num_tokens: int) -> int | None:
        """The captured token count a batch with prefills runs at (None: too large)."""
        return _smallest(self.mixed, num_tokens)

    def capture(self) -> None:
        # NOTE: nothing may synchronize the device while a graph is captured: a collection of
        # garbage (an earlier engine's pinned buffers, freed with cudaFreeHost) would, so
        # the collector runs first and then waits until the capture is over.
        gc.collect()
        gc.disable()
        try:
            self._capture()
        finally:
            gc.enable()

    @contextmanager
    def _lora_batch(self, size: int, kind: str) -> Iterator[None]:
        """The LoRA layers read the graph tables' views for `size` (all tiles empty during
        the capture) while a graph with LoRA is captured."""
        if kind != "decode+lora":
            yield
            return
        assert self.lora is not None
        slots, tables = self.lora
        tables.clear()
        slots.batch = tables.batch(size)
        try:
            yield
        finally:
            slots.batch = None

    def _capture(self) -> None:
        inputs = self.inputs
        inputs.input_ids.zero_()
        inputs.positions.zero_()
        inputs.slot_mapping.fill_(inputs.pad_slot)
        inputs.seq_lens.zero_()
        inputs.query_start_loc.copy_(torch.arange(inputs.max_num_seqs + 1))
        inputs.num_tiles.zero_()  # mixed graphs: no valid tile while capturing
        free_before = torch.cuda.mem_get_info(inputs.device)[0]
        decode_kinds = ["decode"] + (["decode+lora"] if self.lora is not None else [])
        keys = [("mixed", size) for size in self.mixed]
        keys += [(kind, size) for size in self.sizes for kind in decode_kinds]
        pool = None
        for key in sorted(keys, key=lambda k: k[1], reverse=True):
            kind, size = key
            start = time.perf_counter()
            meta = (mixed_metadata if kind == "mixed" else decode_metadata)(inputs, size)
            ids, pos = inputs.input_ids[:size], inputs.positions[:size]
            with self._lora_batch(size, kind):
                self.forward(ids, pos, meta)  # warm-up: compiles kernels, settles the allocator
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.hidden[key] = self.forward(ids, pos, meta)
            pool = graph.pool()
            self.graphs[key] = graph
            self.metas[key] = meta
            torch.cuda.synchronize()
            self.capture_seconds[kind] += time.perf_counter() - start
        # Device memory the capture took (the graphs' pool and their own nodes).
        self.memory_bytes = free_before - torch.cuda.mem_get_info(inputs.device)[0]
        log.info(
            "captured %d graphs in %.1f s, %.0f MiB: decode (batch sizes %d..%d)%s, mixed "
            "(tokens %d..%d)",
            len(self.graphs),
            sum(self.capture_seconds.values()),
            self.memory_bytes / 2**20,
            min(self.sizes, default=0),
            max(self.sizes, default=0),
            " with and without LoRA" if self.lora is not None else "",
            min(self.mixed, default=0),
            max(self.mixed, default=0),
        )

    def replay(self, size: int, kind: str = "decode") -> torch.Tensor:
        """Runs the graph of `size` rows (decode kinds) or tokens (mixed) on what the buffers
        hold; hidden states [size, hidden]."""
        self.graphs[(kind, size)].replay()
        self.replays[kind] += 1
        return self.hidden[(kind, size)]
