"""Every engine core a test creates in this process must end with all its KV blocks back in
the pool (cores in other processes are checked through GetStatus or AsyncLLM.stats)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from runtime_service.engine.core import EngineCore


@pytest.fixture(autouse=True)
def engines_end_idle(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[EngineCore]]:
    created: list[EngineCore] = []
    original = EngineCore.__init__

    def tracking_init(self: EngineCore, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(EngineCore, "__init__", tracking_init)
    yield created
    for engine in created:
        deadline = time.monotonic() + 10  # a core thread may still be applying aborts
        while engine.has_unfinished_requests and time.monotonic() < deadline:
            time.sleep(0.01)
        bm = engine.block_manager
        assert bm.num_free_blocks == bm.num_blocks, (
            f"{bm.num_blocks - bm.num_free_blocks} KV blocks not returned to the pool"
        )
        assert all(b.ref_count == 0 for b in bm.blocks)
        assert engine.scheduler.num_unfinished == 0 and not engine.requests
        if engine.lora is not None:  # no adapter slot still pinned, no request still bound
            assert engine.lora.slots.num_pinned_slots == 0
            assert engine.lora.num_bound_requests == 0
