"""DecodeGraphs: the decode step's forward (embedding to final norm) as CUDA graphs.

A decode step launches ~1,200 small kernels; replayed as one graph it costs the GPU time
alone. One graph is captured per padded batch size (1, 2, 4, 8, then steps of 16 up to 256,
then of 64), largest first so they share one memory pool, at start-up. A decode-only batch of
B requests runs the graph of the smallest size >= B, with the padding rows StepInputs
describes; every other step (prefill chunks) runs eagerly. The LM head and the sampler run
after the graph, on the rows that sample (a static logits tensor per graph would hold
gigabytes).

An engine with LoRA captures a second graph per size, with the grouped LoRA kernels in every
layer reading the fixed-address tables of kernels/lora_tables.py (which rows use which slot)
and the slot tensors (filled in place when an adapter is loaded): a decode step with adapter
tokens replays it, whatever mix of adapters it has. Steps without adapter tokens keep the
graphs without LoRA (no LoRA launches at all). Both sets share one memory pool (a step
replays one graph), so the second set costs its capture time and the graphs' own nodes, not
a second copy of the activations.

NOTE: a graph reads the runner's StepInputs device buffers and the KV cache tensors at the
addresses they had at capture, and writes its hidden states to a static tensor: both must live as
long as the graphs, and nothing may reallocate them.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from runtime_service.engine.step_inputs import StepInputs
from runtime_service.models.attention import AttentionMetadata

if TYPE_CHECKING:
    from runtime_service.kernels.lora_tables import LoRAGraphTables
    from runtime_service.models.lora import LoRASlots

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]


def graph_sizes(max_size: int) -> list[int]:
    sizes = [1, 2, 4, 8, *list(range(16, 257, 16)), *list(range(320, 1025, 64))]
    return [s for s in sizes if s <= max_size]


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


class DecodeGraphs:
    def __init__(
        self,
        inputs: StepInputs,
        forward: Forward,
        max_size: int,
        lora: tuple[LoRASlots, LoRAGraphTables] | None = None,
    ) -> None:
        self.inputs = inputs
        self.forward = forward
        self.sizes = graph_sizes(max_size)
        self.lora = lora
        # Keyed by (size, with LoRA).
        self.graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self.hidden: dict[tuple[int, bool], torch.Tensor] = {}
        self.metas: dict[int, AttentionMetadata] = {}
        self.capture_seconds = {False: 0.0, True: 0.0}  # per set
        self.num_replays = {False: 0, True: 0}
        self.memory_bytes = 0

    def size_for(self, num_reqs: int) -> int | None:
        """The captured size a decode batch of `num_reqs` runs at (None: too large)."""
        for size in self.sizes:
            if size >= num_reqs:
                return size
        return None

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
    def _lora_batch(self, size: int, with_lora: bool) -> Iterator[None]:
        """The LoRA layers read the graph tables' views for `size` (all tiles empty during
        the capture) while a graph with LoRA is captured."""
        if not with_lora:
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
        free_before = torch.cuda.mem_get_info(inputs.device)[0]
        pool = None
        kinds = (False, True) if self.lora is not None else (False,)
        for size in sorted(self.sizes, reverse=True):
            meta = decode_metadata(inputs, size)
            ids, pos = inputs.input_ids[:size], inputs.positions[:size]
            self.metas[size] = meta
            for with_lora in kinds:
                start = time.perf_counter()
                with self._lora_batch(size, with_lora):
                    self.forward(ids, pos, meta)  # warm-up: compiles kernels, settles the allocator
                    torch.cuda.synchronize()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self.hidden[size, with_lora] = self.forward(ids, pos, meta)
                pool = graph.pool()
                self.graphs[size, with_lora] = graph
                torch.cuda.synchronize()
                self.capture_seconds[with_lora] += time.perf_counter() - start
        # Device memory the capture took (the graphs' pool and their own nodes).
        self.memory_bytes = free_before - torch.cuda.mem_get_info(inputs.device)[0]
        log.info(
            "captured %d decode graphs (batch sizes %d..%d) in %.1f s, %.0f MiB, %s",
            len(self.graphs),
            min(self.sizes, default=0),
            max(self.sizes, default=0),
            sum(self.capture_seconds.values()),
            self.memory_bytes / 2**20,
            f"the set with LoRA {self.capture_seconds[True]:.1f} s of it"
            if self.lora is not None
            else "no LoRA",
        )

    def replay(self, size: int, with_lora: bool = False) -> torch.Tensor:
        """Runs the graph of `size` (with the LoRA kernels if `with_lora`) on what the buffers
        hold; hidden states [size, hidden]."""
        self.graphs[size, with_lora].replay()
        self.num_replays[with_lora] += 1
        return self.hidden[size, with_lora]
