"""DecodeGraphs: the decode step's forward (embedding to final norm) as CUDA graphs.

A decode step launches ~1,200 small kernels; replayed as one graph it costs the GPU time
alone. One graph is captured per padded batch size (1, 2, 4, 8, then steps of 16 up to 256,
then of 64), largest first so they share one memory pool, at start-up. A decode-only batch of
B requests runs the graph of the smallest size >= B, with the padding rows StepInputs
describes; every other step (prefill chunks, or a batch with LoRA tokens) runs eagerly. The
LM head and the sampler run after the graph, on the rows that sample (a static logits tensor
per graph would hold gigabytes).

NOTE: a graph reads the runner's StepInputs device buffers and the KV cache tensors at the
addresses they had at capture, and writes its hidden states to a static tensor: both must live as
long as the graphs, and nothing may reallocate them.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from runtime_service.engine.step_inputs import StepInputs
from runtime_service.models.attention import AttentionMetadata

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
    def __init__(self, inputs: StepInputs, forward: Forward, max_size: int) -> None:
        self.inputs = inputs
        self.forward = forward
        self.sizes = graph_sizes(max_size)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.hidden: dict[int, torch.Tensor] = {}
        self.metas: dict[int, AttentionMetadata] = {}

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

    def _capture(self) -> None:
        start = time.perf_counter()
        inputs = self.inputs
        inputs.input_ids.zero_()
        inputs.positions.zero_()
        inputs.slot_mapping.fill_(inputs.pad_slot)
        inputs.seq_lens.zero_()
        inputs.query_start_loc.copy_(torch.arange(inputs.max_num_seqs + 1))
        pool = None
        for size in sorted(self.sizes, reverse=True):
            meta = decode_metadata(inputs, size)
            ids, pos = inputs.input_ids[:size], inputs.positions[:size]
            self.forward(ids, pos, meta)  # warm-up: compiles kernels, settles the allocator
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.hidden[size] = self.forward(ids, pos, meta)
            pool = graph.pool()
            self.graphs[size] = graph
            self.metas[size] = meta
        torch.cuda.synchronize()
        log.info(
            "captured %d decode graphs (batch sizes %d..%d) in %.1f s",
            len(self.sizes),
            min(self.sizes, default=0),
            max(self.sizes, default=0),
            time.perf_counter() - start,
        )

    def replay(self, size: int) -> torch.Tensor:
        """Runs the graph of `size` on what the buffers hold; hidden states [size, hidden]."""
        self.graphs[size].replay()
        return self.hidden[size]
