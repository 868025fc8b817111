"""The query tiles of the paged-attention kernel (triton_attention.py), built on the host.

A batch's queries are cut per request into tiles of `block_q` tokens; the kernel's grid runs
one program per (tile, KV head). These helpers import no Triton, so the step's input buffers
(engine/step_inputs.py) can build the table on any machine.
"""

from __future__ import annotations

import numpy as np


def prefill_block_q(num_heads: int, num_kv_heads: int) -> int:
    """Query tokens per tile of a batch with prefills (decode-only batches use 1): the tile's
    rows hold every query head of one KV head, 64 rows in all."""
    return max(1, 64 // (num_heads // num_kv_heads))


def max_tiles(num_tokens: int, num_seqs: int, block_q: int) -> int:
    """The most tiles a batch of `num_tokens` tokens over at most `num_seqs` requests can
    have: each request's last tile may be partial."""
    return num_tokens // block_q + min(num_tokens, num_seqs)


def tile_table(query_lens, block_q: int) -> tuple[np.ndarray, np.ndarray]:
    """(request, query tile within it) of every query tile of the batch, as int32 arrays."""
    counts = -(-np.asarray(query_lens, dtype=np.int64) // block_q)
    seqs = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    firsts = np.repeat(np.cumsum(counts) - counts, counts)
    index = (np.arange(len(seqs), dtype=np.int64) - firsts).astype(np.int32)
    return seqs, index
