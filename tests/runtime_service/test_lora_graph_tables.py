"""The LoRA tables a CUDA graph reads (kernels/lora_tables.py), checked without a GPU: their
layout against LoRABatch.build's, their fixed size, and the Triton kernels (in Triton's
interpreter here) run over the padded tables against the eager tables and the per-token
definition."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from llmserve.testing.random_adapters import write_adapter
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.request import Request
from runtime_service.engine.scheduler import SchedulerOutput
from runtime_service.kernels.lora_batch import TILE_M, LoRABatch
from runtime_service.kernels.lora_tables import (
    NO_ADAPTER,
    LoRAGraphTables,
    group_tokens,
    max_tiles,
)
from runtime_service.kernels.lora_triton import add_lora_triton
from tests.runtime_service.lora_reference import lora_engine
from tests.runtime_service.test_lora_slots import naive_lora

CPU = torch.device("cpu")


def random_step(rng: random.Random, num_slots: int, decode: bool) -> tuple[list[int], list]:
    """Token counts and slots (None: base model) of a random step."""
    n = rng.randint(1, 40)
    counts = [1 if decode else rng.choice([1, 1, 2, 5, TILE_M, TILE_M + 3, 40]) for _ in range(n)]
    slots = [rng.choice([None, *range(num_slots)]) for _ in range(n)]
    return counts, slots


def as_arrays(counts: list[int], slots: list) -> tuple[np.ndarray, np.ndarray]:
    return np.array(counts), np.array([NO_ADAPTER if s is None else s for s in slots])


@pytest.mark.parametrize("decode", [True, False])
def test_group_tokens_is_lora_batch_layout(decode: bool) -> None:
    """The vectorized tables equal LoRABatch.build's token_indices and tiles (which the eager
    path runs), and never need more tiles than max_tiles reserves."""
    rng = random.Random(7)
    for _ in range(200):
        num_slots = rng.choice([1, 3, 32])
        counts, slots = random_step(rng, num_slots, decode)
        rows, tiles = group_tokens(*as_arrays(counts, slots))
        batch = LoRABatch.build(counts, slots, CPU)
        if batch is None:
            assert len(rows) == 0 and tiles.shape == (0, 3)
            continue
        assert rows.tolist() == batch.token_indices.tolist()
        assert tiles.tolist() == batch.tiles.tolist()
        assert len(tiles) <= max_tiles(len(rows), num_slots)


def test_max_tiles_is_reached() -> None:
    """The bound is tight: segments one token longer than a tile take two tiles each."""
    num_slots = 4
    counts = [TILE_M + 1] * num_slots
    rows, tiles = group_tokens(*as_arrays(counts, list(range(num_slots))))
    assert len(tiles) == max_tiles(len(rows), num_slots) == 2 * num_slots
    # One token per slot (decodes of distinct adapters): one tile each.
    rows, tiles = group_tokens(*as_arrays([1] * 3, [2, 0, 1]))
    assert rows.tolist() == [1, 2, 0] and tiles.tolist() == [[0, 1, 0], [1, 2, 1], [2, 3, 2]]


def test_graph_tables_fill_and_views() -> None:
    tables = LoRAGraphTables(capacity=64, num_slots=8, device=CPU)
    assert tables.num_tiles == max_tiles(64, 8) == 12
    tables.fill(*as_arrays([1] * 10, [3, None, 3, 1, None, 0, 3, 1, 1, 7]), size=16)
    view = tables.batch(16)
    assert view.num_tokens == 16 and view.tiles.shape == (max_tiles(16, 8), 3)
    assert view.token_indices[:8].tolist() == [5, 3, 7, 8, 0, 2, 6, 9]
    assert view.tiles[:5].tolist() == [[0, 1, 0], [1, 4, 1], [4, 7, 3], [7, 8, 7], [0, 0, 0]]
    assert not view.tiles[4:].any()  # empty up to the graph's fixed count
    # Views of size 16 and 64 share the buffers (a graph holds the addresses).
    assert tables.batch(64).tiles.data_ptr() == view.tiles.data_ptr()
    tables.fill(*as_arrays([1] * 3, [None, None, None]), size=16)
    assert not tables.batch(16).tiles.any()
    with pytest.raises(ValueError, match="do not fit"):
        tables.fill(*as_arrays([1] * 20, [0] * 20), size=16)


@pytest.mark.parametrize("k_chunk", [64, 128, None])  # 2 ranges, 1, the default (2)
def test_kernels_over_padded_tables_equal_eager(k_chunk: int | None) -> None:
    """add_lora_triton over a graph's fixed tables (capacity above the step's rows, empty
    tiles, padding rows) gives the eager tables' result and the definition's; rows without
    an adapter stay bit for bit what they were."""
    g = torch.Generator().manual_seed(1)
    num_slots, parts_n, max_rank, in_f, offsets = 5, 2, 8, 80, (0, 24, 40)
    a = torch.randn(num_slots, parts_n, max_rank, in_f, generator=g)
    b = torch.randn(num_slots, 40, max_rank, generator=g)
    ranks, scalings = [8, 4, 8, 2, 8], [2.0, 0.5, 1.0, 3.0, 0.0]
    parts = [(0, 1), (1,), (0,), (0, 1), ()]
    for slot, r in enumerate(ranks):
        a[slot, :, r:] = 0
        b[slot, :, r:] = 0
        for p in set(range(parts_n)) - set(parts[slot]):
            a[slot, p] = 0
            b[slot, offsets[p] : offsets[p + 1]] = 0
    scale = torch.tensor(scalings)
    slots = [2, None, 0, 2, 1, 3, 0, None, 2, 2, 1, 0]  # one decode token each
    size = 16  # the graph's padded batch: rows 12..15 are padding
    x = torch.randn(size, in_f, generator=g)
    base = torch.randn(size, 40, generator=g)
    # Triton's interpreter on the CPU; the compiled kernels where there is a GPU.
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    a_d, b_d, x_d, scale_d = a.to(dev), b.to(dev), x.to(dev), scale.to(dev)
    tables = LoRAGraphTables(capacity=32, num_slots=num_slots, device=dev)
    tables.fill(*as_arrays([1] * len(slots), slots), size=size)
    graph_y = base.to(dev, copy=True)
    add_lora_triton(graph_y, x_d, a_d, b_d, offsets, tables.batch(size), scale_d, k_chunk=k_chunk)
    eager = LoRABatch.build([1] * len(slots), slots, dev)
    assert eager is not None
    eager_y = base.to(dev, copy=True)
    add_lora_triton(eager_y, x_d[: len(slots)], a_d, b_d, offsets, eager, scale_d, k_chunk=k_chunk)
    graph_y, eager_y = graph_y.cpu(), eager_y.cpu()
    token_slots = [*slots, *[None] * (size - len(slots))]
    expected = base + naive_lora(x, a, b, offsets, token_slots, ranks, scalings, parts)
    torch.testing.assert_close(graph_y, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(graph_y[: len(slots)], eager_y[: len(slots)], rtol=0, atol=1e-6)
    for row, slot in enumerate(token_slots):
        if slot is None:
            assert torch.equal(graph_y[row], base[row]), row


def test_manager_fills_graph_tables_for_a_graph_step(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """LoRAManager.begin_batch with a graph size writes the step's slots to the graph
    tables (and leaves no eager batch for the layers); without one it builds the eager
    LoRABatch; a step without adapter tokens reports none either way."""
    path = tiny_model_dir("llama")
    config = json.loads((path / "config.json").read_text())
    engine = lora_engine(path, max_loras=3, device="cpu")
    lora = engine.lora
    assert lora is not None
    for name in ("x", "y"):
        lora.register(lora.read(name, write_adapter(tmp_path / name, config, 4, ["q_proj"], 0)))
    reqs = [
        Request(f"r{i}", [1, 2, 3], SamplingParams(max_tokens=4), (), 100, adapter)
        for i, adapter in enumerate(["y", None, "x", "y", None])
    ]
    for r in reqs:
        if r.adapter is not None:
            lora.bind(r)
            lora.acquire(r)
    assert [lora.slots.slot_of(name) for name in ("y", "x")] == [0, 1]  # in order of need
    sched = SchedulerOutput(reqs, [1] * len(reqs), [[0]] * len(reqs))
    slots, tables = lora.graph_inputs(8)
    assert slots is lora.device_slots
    assert lora.begin_batch(sched, graph_size=8)
    assert slots.batch is None  # the replay reads the tables, not the layers' batch
    assert tables.h_rows[:3].tolist() == [0, 3, 2]
    n = max_tiles(8, 3)
    assert tables.h_tiles[:n].tolist() == [[0, 2, 0], [2, 3, 1], *[[0, 0, 0]] * (n - 2)]
    assert lora.begin_batch(sched)
    assert isinstance(slots.batch, LoRABatch)
    assert slots.batch.token_indices.tolist() == tables.h_rows[:3].tolist()
    base_only = SchedulerOutput([reqs[1], reqs[4]], [1, 1], [[0], [0]])
    assert not lora.begin_batch(base_only, graph_size=8) and slots.batch is None
    assert not lora.begin_batch(base_only) and slots.batch is None
    for r in reqs:
        lora.finish(r)
