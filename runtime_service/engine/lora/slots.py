"""AdapterSlots: which adapter sits in which device slot, who pins it, what to evict next.

Pure bookkeeping (the tensors are in lora/weights.py). A slot holds one adapter's weights on
the device. A request pins its adapter's slot from admission until it finishes or is
preempted; a pinned slot is never evicted. When an adapter needs a slot, it takes a free one,
else the least recently used unpinned one (its adapter stays in host memory).
"""

from __future__ import annotations

from collections import OrderedDict


class AdapterSlots:
    def __init__(self, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        self._names: list[str | None] = [None] * num_slots
        self._slot_of: dict[str, int] = {}
        self._pins: dict[str, set[str]] = {}  # adapter -> ids of the requests pinning it
        # Unpinned occupied slots' adapters, least recently used first (eviction order).
        self._lru: OrderedDict[str, None] = OrderedDict()
        self.num_loads = 0  # adapters copied into a slot
        self.num_evictions = 0  # adapters displaced from a slot by another

    def slot_of(self, name: str) -> int | None:
        return self._slot_of.get(name)

    def name_in(self, slot: int) -> str | None:
        return self._names[slot]

    def num_pins(self, name: str) -> int:
        return len(self._pins.get(name, ()))

    def is_pinned(self, name: str) -> bool:
        return bool(self._pins.get(name))

    @property
    def num_pinned_slots(self) -> int:
        return sum(1 for name in self._slot_of if self.is_pinned(name))

    def can_place(self, name: str) -> bool:
        """Whether `name` is in a slot or can get one now (a free or unpinned slot)."""
        return name in self._slot_of or None in self._names or bool(self._lru)

    def place(self, name: str) -> tuple[int, str | None, bool]:
        """Puts `name` in a slot: (slot, adapter evicted from it or None, whether its weights
        must be copied in). Call only when can_place(name)."""
        slot = self._slot_of.get(name)
        if slot is not None:
            return slot, None, False
        evicted = None
        if None in self._names:
            slot = self._names.index(None)
        elif self._lru:
            evicted, _ = self._lru.popitem(last=False)
            slot = self._slot_of.pop(evicted)
            self.num_evictions += 1
        else:
            raise RuntimeError(f"no slot for adapter {name!r}: every slot is pinned")
        self._names[slot] = name
        self._slot_of[name] = slot
        self._lru[name] = None
        self.num_loads += 1
        return slot, evicted, True

    def pin(self, name: str, request_id: str) -> None:
        """Marks `name` (which must be in a slot) as used by a running request."""
        if name not in self._slot_of:
            raise RuntimeError(f"adapter {name!r} is pinned but holds no slot")
        self._pins.setdefault(name, set()).add(request_id)
        self._lru.pop(name, None)

    def unpin(self, name: str, request_id: str) -> None:
        """Releases one request's pin (no-op if it held none). An adapter no request pins
        becomes the most recently used candidate for eviction."""
        users = self._pins.get(name)
        if users is None or request_id not in users:
            return
        users.discard(request_id)
        if not users:
            del self._pins[name]
            if name in self._slot_of:
                self._lru[name] = None

    def drop(self, name: str) -> int | None:
        """Frees `name`'s slot (it must not be pinned); returns the slot it held."""
        if self.is_pinned(name):
            raise RuntimeError(f"adapter {name!r} is pinned and cannot leave its slot")
        slot = self._slot_of.pop(name, None)
        self._lru.pop(name, None)
        if slot is not None:
            self._names[slot] = None
        return slot
