"""Device-slot bookkeeping and the grouped LoRA product, on their own."""

from __future__ import annotations

import pytest
import torch

from runtime_service.engine.lora.slots import AdapterSlots
from runtime_service.kernels.lora_batch import SHORT_SEGMENT, TILE_M, LoRABatch
from runtime_service.kernels.lora_torch import SlotTable, add_lora
from runtime_service.kernels.lora_triton import add_lora_triton


def test_free_slots_first_then_least_recently_used_unpinned() -> None:
    s = AdapterSlots(2)
    assert s.place("a") == (0, None, True)
    assert s.place("b") == (1, None, True)
    assert s.place("a") == (0, None, False)  # already there: no copy
    s.pin("a", "r1")
    s.pin("b", "r2")
    assert not s.can_place("c")  # every slot pinned
    s.unpin("b", "r2")
    s.unpin("a", "r1")  # a was released last: b is the least recently used
    assert s.can_place("c")
    assert s.place("c") == (1, "b", True)
    assert s.num_evictions == 1 and s.num_loads == 3
    assert s.slot_of("b") is None and s.name_in(1) == "c"


def test_pinned_adapter_is_never_evicted() -> None:
    s = AdapterSlots(2)
    for name, rid in (("a", "r1"), ("b", "r2")):
        s.place(name)
        s.pin(name, rid)
    s.pin("a", "r3")
    s.unpin("a", "r1")  # r3 still pins a
    s.unpin("b", "r2")
    assert s.place("c")[1] == "b"
    s.unpin("c", "nobody")  # no-op
    assert s.can_place("d")  # c is unpinned
    s.pin("c", "r4")
    assert not s.can_place("d")
    with pytest.raises(RuntimeError, match="every slot is pinned"):
        s.place("d")
    with pytest.raises(RuntimeError, match="pinned"):
        s.drop("a")
    s.unpin("a", "r3")
    assert s.drop("a") == 0 and s.place("d") == (0, None, True)


def naive_lora(x, a, b, offsets, token_slots, ranks, scalings, parts):
    """One token at a time, one part at a time: the definition."""
    y = torch.zeros(x.shape[0], b.shape[1], dtype=x.dtype)
    for t, slot in enumerate(token_slots):
        if slot is None:
            continue
        r = ranks[slot]
        for p in parts[slot]:
            lo, hi = offsets[p], offsets[p + 1]
            y[t, lo:hi] = b[slot, lo:hi, :r] @ (a[slot, p, :r] @ x[t]) * scalings[slot]
    return y


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("long_prefill", [False, True])
def test_grouped_product_equals_per_token_definition(long_prefill: bool, kernel: str) -> None:
    """Both implementations (plain torch; Triton, here in its interpreter without a GPU)
    against the per-token definition, in float32 on the device tests run on."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kernel == "torch":
        device = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    dtype = torch.float64 if kernel == "torch" else torch.float32
    slots, parts_n, max_rank, in_f, offsets = 4, 3, 8, 24, (0, 16, 24, 32)
    a = torch.randn(slots, parts_n, max_rank, in_f, generator=g, dtype=dtype)
    b = torch.randn(slots, 32, max_rank, generator=g, dtype=dtype)
    ranks, scalings = [8, 4, 2, 8], [2.0, 0.5, 3.0, 1.0]
    parts = [(0, 1, 2), (1,), (0, 2), ()]  # slot 3's adapter leaves this layer alone
    for slot, r in enumerate(ranks):  # what the slots hold: zeros past the rank and parts
        a[slot, :, r:] = 0
        b[slot, :, r:] = 0
        for p in set(range(parts_n)) - set(parts[slot]):
            a[slot, p] = 0
            b[slot, offsets[p] : offsets[p + 1]] = 0
    table = SlotTable(ranks, scalings, torch.tensor(scalings, dtype=dtype), list(parts))
    # Requests in batch order, interleaving slots and base-model requests; with long_prefill,
    # one is a prefill chunk longer than SHORT_SEGMENT, so slot 0 takes the one-by-one path
    # (and spans several Triton tiles).
    counts = [3, 1, 5, 2, 1, 4, SHORT_SEGMENT + 8 if long_prefill else 6]
    request_slots = [2, None, 0, 2, 1, 3, 0]
    token_slots = [s for n, s in zip(counts, request_slots, strict=True) for _ in range(n)]
    x = torch.randn(sum(counts), in_f, generator=g, dtype=dtype)
    base = torch.randn(sum(counts), 32, generator=g, dtype=dtype)
    batch = LoRABatch.build(counts, request_slots, device)
    assert batch is not None
    assert [s for _, _, s in batch.segments] == [0, 1, 2, 3]  # grouped by slot
    assert [s for _, _, s in batch.long_segments] == ([0] if long_prefill else [])
    assert all(end - start <= TILE_M for start, end, _ in batch.tiles.tolist())
    y = base.clone().to(device)
    if kernel == "torch":
        add_lora(y, x, a, b, offsets, batch, table)
    else:
        add_lora_triton(
            y, x.to(device), a.to(device), b.to(device), offsets, batch,
            table.scalings_tensor.to(device),
        )  # fmt: skip
    expected = base + naive_lora(x, a, b, offsets, token_slots, ranks, scalings, parts)
    torch.testing.assert_close(y.cpu(), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(y[3].cpu(), base[3])  # the base-model token is untouched, bit for bit
    assert LoRABatch.build([4, 2], [None, None], torch.device("cpu")) is None
