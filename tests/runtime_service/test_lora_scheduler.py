"""The scheduler's adapter-slot policy on its own: adapter requests wait in order for slots,
base-model requests pass them, pins follow admission, preemption and finishing."""

from __future__ import annotations

from runtime_service.engine.block_manager import BlockManager
from runtime_service.engine.lora.slots import AdapterSlots
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.request import Request, RequestStatus
from runtime_service.engine.scheduler import Scheduler


class SlotsOnly:
    """The scheduler's view of LoRAManager (its hooks), without weights."""

    def __init__(self, num_slots: int) -> None:
        self.slots = AdapterSlots(num_slots)

    def can_acquire(self, req: Request) -> bool:
        return self.slots.can_place(req.adapter)

    def acquire(self, req: Request) -> None:
        self.slots.place(req.adapter)
        self.slots.pin(req.adapter, req.request_id)

    def release(self, req: Request) -> None:
        if req.adapter is not None:
            self.slots.unpin(req.adapter, req.request_id)

    def finish(self, req: Request) -> None:
        self.release(req)


def make(num_slots: int, num_blocks: int = 64) -> tuple[Scheduler, SlotsOnly]:
    lora = SlotsOnly(num_slots)
    bm = BlockManager(num_blocks, block_size=4, enable_prefix_caching=False)
    return Scheduler(bm, 8, 64, True, lora), lora  # type: ignore[arg-type]


def req(rid: str, adapter: str | None, n: int = 4) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=10), (), 1000, adapter)


def ids(out) -> list[str]:
    return [r.request_id for r in out.requests]


def test_blocked_adapter_request_holds_later_adapter_requests_not_base_ones() -> None:
    s, lora = make(num_slots=1)
    a1, b1, base1, a2, base2 = (
        req("a1", "A"), req("b1", "B"), req("base1", None), req("a2", "A"), req("base2", None)
    )  # fmt: skip
    for r in (a1, b1, base1, a2, base2):
        s.add(r)
    out = s.schedule()
    # A takes the only slot; B cannot get one; a2 (for the resident A) waits behind b1 so
    # that A's slot drains; base-model requests need no slot and pass.
    assert ids(out) == ["a1", "base1", "base2"]
    assert [r.request_id for r in s.waiting] == ["b1", "a2"]
    assert lora.slots.is_pinned("A") and not lora.slots.can_place("B")
    s.finish([a1], RequestStatus.FINISHED_STOPPED)
    out = s.schedule()
    assert "b1" in ids(out) and "a2" not in ids(out)  # B got the freed slot first
    assert lora.slots.slot_of("B") == 0 and lora.slots.num_evictions == 1
    s.finish([b1], RequestStatus.FINISHED_STOPPED)
    assert "a2" in ids(s.schedule())
    assert lora.slots.num_loads == 3


def test_preemption_and_abort_release_pins() -> None:
    s, lora = make(num_slots=2, num_blocks=3)  # 3 blocks of 4 tokens
    a, b = req("a", "A"), req("b", "B")
    s.add(a)
    s.add(b)
    out = s.schedule()
    assert ids(out) == ["a", "b"] and lora.slots.is_pinned("A") and lora.slots.is_pinned("B")
    for r in s.update(out):  # both prompts done: each samples a token and needs a new block
        r.append_output_token(7, None)
    out = s.schedule()  # one block left: a gets it, b (the newest) is preempted
    assert ids(out) == ["a"] and out.num_preempted == 1
    assert b.status == RequestStatus.PREEMPTED and not lora.slots.is_pinned("B")
    assert lora.slots.slot_of("B") is not None  # still resident, only unpinned
    s.finish([a, b], RequestStatus.FINISHED_ABORTED)
    assert not lora.slots.is_pinned("A")
    assert s.block_manager.num_free_blocks == 3
