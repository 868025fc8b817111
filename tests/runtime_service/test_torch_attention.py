"""The CPU paged attention (kernels/torch_attention.py) against attention written out in plain
torch math, one request at a time over its own dense K/V: batched decodes (grouped query
heads), fresh prompts read from the step's own k/v instead of the cache, and mixed steps."""

from __future__ import annotations

import random

import pytest
import torch

from runtime_service.kernels.torch_attention import paged_attention_reference
from runtime_service.models.attention import AttentionMetadata


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, window: int | None
) -> torch.Tensor:
    """q [n, H, d] at positions start.. over k, v [L, Hkv, d]: softmax(q k^T / sqrt(d)) v."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * q.shape[-1] ** -0.5
    q_pos = torch.arange(start, start + len(q))[:, None]
    k_pos = torch.arange(len(k))[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.double()).to(q.dtype)


def case_inputs(
    query_lens: list[int], context_lens: list[int], heads: int, kv_heads: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, list]:
    """q, a cache with each request's blocks scattered in the pool, this step's own k and v
    (as the cache holds them at the new tokens' slots), the metadata, and each request's
    dense K/V."""
    g = torch.Generator().manual_seed(seed)
    block_size, head_dim = 8, 16
    seq_lens = [c + n for c, n in zip(context_lens, query_lens, strict=True)]
    per_seq = [-(-n // block_size) for n in seq_lens]
    order = list(range(sum(per_seq) + 2))
    random.Random(seed).shuffle(order)
    kv = torch.randn(2, len(order), block_size, kv_heads, head_dim, generator=g)
    tables, dense, slots = [], [], []
    for i, n in enumerate(per_seq):
        table = order[sum(per_seq[:i]) : sum(per_seq[: i + 1])]
        tables.append(table + [0] * (max(per_seq) - n))
        seq_slots = [
            table[p // block_size] * block_size + p % block_size for p in range(seq_lens[i])
        ]
        slots += seq_slots[context_lens[i] :]
        dense.append(kv.view(2, -1, kv_heads, head_dim)[:, seq_slots])
    flat = kv.view(2, -1, kv_heads, head_dim)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        block_tables=torch.tensor(tables, dtype=torch.int32),
        query_start_loc=torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()]),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        query_lens_cpu=query_lens,
        seq_lens_cpu=seq_lens,
    )
    q = torch.randn(sum(query_lens), heads, head_dim, generator=g)
    return q, kv, flat[0, slots], flat[1, slots], meta, dense


CASES = [
    # query lens, context lens, heads, kv heads, sliding window
    ([1, 1, 1, 1], [5, 40, 17, 30], 9, 3, None),  # decodes, GQA 3 (SmolLM2's grouping)
    ([1, 1, 1], [20, 3, 33], 4, 1, 10),  # decodes, MQA, sliding window
    ([1, 1, 1], [17, 17, 17], 9, 3, None),  # decodes of one context length: no mask
    ([12, 12, 12], [0, 0, 0], 9, 3, None),  # fresh prompts of one length: one batched call
    ([12, 12], [0, 0], 4, 2, 5),  # the same with a sliding window
    ([7, 1, 20, 1], [0, 30, 0, 9], 4, 4, None),  # fresh prompts and decodes in one step
    ([5, 9], [6, 0], 9, 3, None),  # a prefill chunk after cached context, a fresh prompt
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("own_kv", [True, False])
def test_matches_dense_attention(case: tuple, own_kv: bool) -> None:
    query_lens, context_lens, heads, kv_heads, window = case
    q, kv, k, v, meta, dense = case_inputs(query_lens, context_lens, heads, kv_heads, seed=3)
    out = paged_attention_reference(
        q, kv, meta, q.shape[-1] ** -0.5, window, *((k, v) if own_kv else (None, None))
    )
    start = 0
    for n, context, (ki, vi) in zip(query_lens, context_lens, dense, strict=True):
        expected = dense_attention(q[start : start + n], ki, vi, context, window)
        torch.testing.assert_close(out[start : start + n], expected, atol=1e-5, rtol=1e-5)
        start += n
