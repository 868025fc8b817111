"""Scheduler on its own: budgets, chunking, FCFS, preemption of the newest."""

from __future__ import annotations

from runtime_service.engine.block_manager import BlockManager
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.request import Request, RequestStatus
from runtime_service.engine.scheduler import Scheduler


def make(
    num_blocks: int = 64,
    budget: int = 32,
    max_seqs: int = 8,
    chunked: bool = True,
    prefix: bool = False,
) -> Scheduler:
    bm = BlockManager(num_blocks, block_size=4, enable_prefix_caching=prefix)
    return Scheduler(bm, max_seqs, budget, chunked)


def req(rid: str, n: int) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_tokens=100), (), 1000)


def finish_step(s: Scheduler, out, token: int = 7) -> None:
    """Apply a step's results as the engine does: advance, then append sampled tokens."""
    for r in s.update(out):
        r.append_output_token(token, None)


def test_budget_chunks_prefill_and_mixes_decodes() -> None:
    s = make(budget=10)
    a, b = req("a", 6), req("b", 12)
    s.add(a)
    s.add(b)
    out = s.schedule()
    assert [r.request_id for r in out.requests] == ["a", "b"]
    assert out.num_scheduled_tokens == [6, 4]  # b's prefill is chunked
    finish_step(s, out)
    out = s.schedule()
    assert out.num_scheduled_tokens == [1, 8]  # a decodes, b continues its prefill
    finish_step(s, out)
    assert b.num_output_tokens == 1 and a.num_output_tokens == 2


def test_without_chunking_a_prompt_waits_for_a_whole_budget() -> None:
    s = make(budget=10, chunked=False)
    s.add(req("a", 8))
    s.add(req("b", 5))
    out = s.schedule()
    assert out.num_scheduled_tokens == [8]  # b does not fit whole; FCFS keeps it waiting
    finish_step(s, out)
    out = s.schedule()
    assert out.num_scheduled_tokens == [1, 5]


def test_max_num_seqs_limits_running() -> None:
    s = make(max_seqs=2)
    for i in range(4):
        s.add(req(f"r{i}", 3))
    out = s.schedule()
    assert len(out) == 2 and len(s.waiting) == 2


def test_preempts_newest_when_blocks_run_out_and_resumes_it() -> None:
    s = make(num_blocks=4, budget=64)  # 16 token slots
    a, b = req("a", 8), req("b", 8)  # 2 full blocks each
    s.add(a)
    s.add(b)
    finish_step(s, s.schedule())  # both prefilled and sampled: 9 tokens each, pool full
    out = s.schedule()  # a's 9th token needs a 5th block: b (newest) is preempted
    assert out.requests == [a] and out.num_preempted == 1
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert s.waiting[0] is b and s.num_preemptions == 1
    finish_step(s, out)
    s.finish([a], RequestStatus.FINISHED_LENGTH)
    out = s.schedule()
    assert out.requests == [b] and out.num_scheduled_tokens == [9]  # recomputes all 9 tokens
    assert s.block_manager.num_free_blocks == 1


def test_abort_frees_blocks_at_once() -> None:
    s = make(num_blocks=8)
    a = req("a", 10)
    s.add(a)
    s.schedule()
    assert s.block_manager.num_free_blocks == 5
    s.finish([a], RequestStatus.FINISHED_ABORTED)
    assert s.block_manager.num_free_blocks == 8 and not s.running


def test_prefix_hits_skip_computation() -> None:
    s = make(prefix=True)
    a = req("a", 12)
    s.add(a)
    finish_step(s, s.schedule())
    s.finish([a], RequestStatus.FINISHED_STOPPED)
    b = req("b", 14)  # same first 12 tokens
    s.add(b)
    out = s.schedule()
    assert b.num_cached_tokens == 12 and out.num_scheduled_tokens == [2]
