"""BlockManager: the KV cache's blocks, who holds them, and the prefix cache.

The pool is `num_blocks` fixed-size blocks. A request holds a list of blocks (its block
table); blocks are reference-counted so requests sharing a prefix share its blocks. With
prefix caching, each *full* block is named by a chained hash of its tokens (the hash of the
block before it, the block's token ids, and an extra key such as the LoRA adapter), so a new
request whose prompt starts with the same tokens reuses those blocks and skips their prefill.

NOTE: a block with ref_count 0 is free. Free blocks wait in an LRU queue; a free block that
still holds a cached prefix stays findable by its hash until the queue hands it out again,
at which point its hash is dropped (least recently freed first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from runtime_service.engine.request import Request


class KVBlock:
    __slots__ = ("block_hash", "block_id", "ref_count")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: bytes | None = None


def hash_block(parent: bytes | None, token_ids: list[int], extra: str | None) -> bytes:
    """Chained hash of one full block (sha256: prefixes from different tenants must not
    collide)."""
    h = hashlib.sha256(parent or b"")
    h.update(b"".join(t.to_bytes(4, "little") for t in token_ids))
    if extra:
        h.update(extra.encode())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[bytes, KVBlock] = {}
        self._req_blocks: dict[str, list[KVBlock]] = {}
        self._req_block_ids: dict[str, list[int]] = {}  # the same blocks' ids, kept in step
        self._num_cached_blocks: dict[str, int] = {}  # blocks of a request already hashed in
        # Free blocks still holding a cached prefix: a counter, so other threads can read it.
        self.num_cached_free_blocks = 0
        # Prefix-cache statistics, in tokens.
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    # State.
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def block_ids(self, request_id: str) -> list[int]:
        """The request's block table: the live list (read it, never change it; it grows when
        the request gets a block, and a new list follows a free)."""
        return self._req_block_ids.get(request_id, [])

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # Prefix cache.
    def _update_block_hashes(self, req: Request) -> None:
        bs = self.block_size
        hashes = req.block_hashes
        for i in range(len(hashes), req.num_known_tokens // bs):
            parent = hashes[i - 1] if i else None
            tokens = req.all_token_ids[i * bs : (i + 1) * bs]
            hashes.append(hash_block(parent, tokens, req.cache_key))

    def get_computed_blocks(self, req: Request) -> list[KVBlock]:
        """Cached blocks holding the longest prefix of req's tokens, stopping short of the last
        token (its logits must be computed)."""
        if not self.enable_prefix_caching:
            return []
        self._update_block_hashes(req)
        max_blocks = (req.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for block_hash in req.block_hashes[:max_blocks]:
            block = self._cached.get(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def record_lookup(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_cache_queries += num_query_tokens
        self.prefix_cache_hits += num_hit_tokens

    # Allocation.
    def allocate_slots(
        self, req: Request, num_new_tokens: int, computed: list[KVBlock] | None = None
    ) -> bool:
        """Gives req the blocks for `computed` (prefix hits) plus room for num_new_tokens more
        tokens after them. Returns False, changing nothing, if the pool cannot."""
        if not computed:  # a running request whose blocks have room (most decodes)
            held = self._req_blocks.get(req.request_id)
            if held and req.num_computed_tokens + num_new_tokens <= len(held) * self.block_size:
                return True
        computed = computed or []
        held = self._req_blocks.setdefault(req.request_id, [])
        held_ids = self._req_block_ids.setdefault(req.request_id, [])
        num_tokens = req.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
        num_new_blocks = self.blocks_needed(num_tokens) - len(held) - len(computed)
        # Hits that are free right now leave the free queue, so they count against it.
        num_free_hits = sum(1 for b in computed if b.ref_count == 0)
        if num_new_blocks > len(self._free) - num_free_hits:
            if not held:
                del self._req_blocks[req.request_id]
                del self._req_block_ids[req.request_id]
            return False
        for block in computed:
            if block.ref_count == 0:
                del self._free[block.block_id]
                self.num_cached_free_blocks -= 1
            block.ref_count += 1
            held.append(block)
            held_ids.append(block.block_id)
        for _ in range(max(num_new_blocks, 0)):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                self.num_cached_free_blocks -= 1
                # Evict its cached prefix; another block may now hold the same hash.
                if self._cached.get(block.block_hash) is block:
                    del self._cached[block.block_hash]
                block.block_hash = None
            block.ref_count = 1
            held.append(block)
            held_ids.append(block.block_id)
        if computed:
            self._num_cached_blocks[req.request_id] = len(computed)
        return True

    def cache_full_blocks(self, req: Request) -> None:
        """Publishes req's newly computed full blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        self._update_block_hashes(req)
        held = self._req_blocks.get(req.request_id, [])
        start = self._num_cached_blocks.get(req.request_id, 0)
        computed = min(req.num_computed_tokens, req.num_known_tokens)
        end = min(computed // self.block_size, len(held), len(req.block_hashes))
        for i in range(start, end):
            block, block_hash = held[i], req.block_hashes[i]
            if block.block_hash is None and block_hash not in self._cached:
                block.block_hash = block_hash
                self._cached[block_hash] = block
        self._num_cached_blocks[req.request_id] = max(start, end)

    def free(self, req: Request) -> None:
        """Releases req's blocks. Its last blocks enter the LRU queue first, so a shared
        prefix outlives the tail that only this request used."""
        self._req_block_ids.pop(req.request_id, None)
        for block in reversed(self._req_blocks.pop(req.request_id, [])):
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.block_id] = block
                if block.block_hash is not None:
                    self.num_cached_free_blocks += 1
        self._num_cached_blocks.pop(req.request_id, None)

    def reset_prefix_cache(self) -> None:
        """Forgets every cached prefix (blocks in use keep their contents)."""
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
        self.num_cached_free_blocks = 0
