"""BlockManager on its own: allocation, sharing, prefix hits, LRU eviction."""

from __future__ import annotations

from runtime_service.engine.block_manager import BlockManager, hash_block
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.request import Request

BS = 4


def request(rid: str, tokens: list[int], adapter: str | None = None) -> Request:
    return Request(rid, tokens, SamplingParams(), (), 1000, adapter)


def compute(bm: BlockManager, req: Request, n: int) -> None:
    """Pretend a step computed n more tokens of req (as the scheduler's update does)."""
    req.num_computed_tokens += n
    bm.cache_full_blocks(req)


def test_allocate_counts_blocks_and_refuses_when_full() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS, enable_prefix_caching=False)
    a = request("a", list(range(9)))  # 9 tokens: 3 blocks
    assert bm.allocate_slots(a, 9)
    assert len(bm.block_ids("a")) == 3 and bm.num_free_blocks == 1
    b = request("b", list(range(5)))  # needs 2 blocks, 1 left
    assert not bm.allocate_slots(b, 5)
    assert bm.num_free_blocks == 1 and bm.block_ids("b") == []
    compute(bm, a, 9)
    assert bm.allocate_slots(a, 1)  # the 10th token fits in block 3
    assert bm.num_free_blocks == 1
    bm.free(a)
    assert bm.num_free_blocks == 4


def test_prefix_hits_share_blocks_and_stop_before_the_last_token() -> None:
    bm = BlockManager(num_blocks=10, block_size=BS, enable_prefix_caching=True)
    a = request("a", list(range(10)))
    assert bm.get_computed_blocks(a) == []
    assert bm.allocate_slots(a, 10)
    compute(bm, a, 10)  # blocks 0 and 1 are full and cached, block 2 half full
    b = request("b", [*list(range(8)), 99, 98])
    hits = bm.get_computed_blocks(b)
    assert [h.block_id for h in hits] == bm.block_ids("a")[:2]
    assert bm.allocate_slots(b, 2, hits)
    assert all(blk.ref_count == 2 for blk in hits)
    # A prompt equal to a cached prefix still computes its last token.
    c = request("c", list(range(8)))
    assert len(bm.get_computed_blocks(c)) == 1
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 10
    assert bm.num_cached_free_blocks == 2


def test_lru_evicts_least_recently_freed_and_keeps_shared_prefix() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS, enable_prefix_caching=True)
    a = request("a", list(range(16)))
    assert bm.allocate_slots(a, 16)
    compute(bm, a, 16)
    bm.free(a)  # tail blocks enter the LRU queue first
    assert bm.num_cached_free_blocks == 4
    b = request("b", [50, 51, 52, 53, 54])  # needs 2 fresh blocks: the two tail blocks go
    assert bm.allocate_slots(b, 5)
    assert bm.num_cached_free_blocks == 2
    again = request("a2", list(range(16)))
    assert len(bm.get_computed_blocks(again)) == 2  # the first two blocks survived


def test_hash_chain_depends_on_parent_and_adapter() -> None:
    h1 = hash_block(None, [1, 2, 3, 4], None)
    assert hash_block(None, [1, 2, 3, 4], None) == h1
    assert hash_block(h1, [1, 2, 3, 4], None) != h1
    assert hash_block(None, [1, 2, 3, 4], "lora-a") != h1
    bm = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=True)
    a = request("a", list(range(9)), adapter="x")
    assert bm.allocate_slots(a, 9)
    compute(bm, a, 9)
    assert bm.get_computed_blocks(request("b", list(range(9)), adapter="y")) == []
    assert len(bm.get_computed_blocks(request("c", list(range(9)), adapter="x"))) == 2


def test_free_hits_count_against_capacity() -> None:
    bm = BlockManager(num_blocks=3, block_size=BS, enable_prefix_caching=True)
    a = request("a", list(range(8)))
    assert bm.allocate_slots(a, 8)
    compute(bm, a, 8)
    bm.free(a)
    b = request("b", list(range(8)) + list(range(100, 108)))  # 4 blocks: 1 hit + 3 new
    hits = bm.get_computed_blocks(b)
    assert len(hits) == 2
    assert not bm.allocate_slots(b, 8, hits)  # 2 hits + 2 new > 3 blocks
    assert bm.num_free_blocks == 3 and all(blk.ref_count == 0 for blk in bm.blocks)


def test_cached_free_counter_matches_the_free_queue() -> None:
    bm = BlockManager(num_blocks=6, block_size=BS, enable_prefix_caching=True)

    def counted() -> int:
        return sum(1 for b in bm._free.values() if b.block_hash is not None)

    a = request("a", list(range(13)))
    assert bm.allocate_slots(a, 13)
    compute(bm, a, 13)
    bm.free(a)
    assert bm.num_cached_free_blocks == counted() == 3
    b = request("b", [*range(8), 70, 71, 72, 73, 74, 75])
    hits = bm.get_computed_blocks(b)
    assert bm.allocate_slots(b, 6, hits)  # 2 hits leave the queue, 2 fresh blocks evict none
    assert bm.num_cached_free_blocks == counted()
    c = request("c", [90] * 8)
    assert bm.allocate_slots(c, 8)  # takes the last free blocks, evicting a cached one
    assert bm.num_cached_free_blocks == counted()
    bm.free(b)
    bm.free(c)
    assert bm.num_cached_free_blocks == counted()
    bm.reset_prefix_cache()
    assert bm.num_cached_free_blocks == counted() == 0
