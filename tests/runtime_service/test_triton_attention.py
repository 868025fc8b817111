"""The Triton paged-attention kernel against the torch reference.

On a machine without CUDA the kernel runs in Triton's interpreter (numpy), so CI checks its
logic; on a GPU it runs compiled. Skipped where triton is not installed.
"""

from __future__ import annotations

import random

import pytest
import torch

# tests/conftest.py sets TRITON_INTERPRET=1 on machines without CUDA.
triton_attention = pytest.importorskip("runtime_service.kernels.triton_attention")

from runtime_service.kernels.torch_attention import paged_attention_reference  # noqa: E402
from runtime_service.models.attention import AttentionMetadata  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_batch(
    query_lens: list[int],
    context_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Random q and a KV cache whose blocks are scattered in the pool, as after churn."""
    g = torch.Generator().manual_seed(seed)
    seq_lens = [c + q for c, q in zip(context_lens, query_lens, strict=True)]
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    order = list(range(num_blocks))
    random.Random(seed).shuffle(order)
    tables, taken = [], 0
    for n in blocks_per_seq:
        tables.append(order[taken : taken + n])
        taken += n
    width = max(blocks_per_seq)
    kv = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    q = torch.randn(sum(query_lens), num_heads, head_dim, generator=g)
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(sum(query_lens), dtype=torch.long, device=DEVICE),
        block_tables=torch.tensor(
            [t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=DEVICE
        ),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        query_lens_cpu=query_lens,
        seq_lens_cpu=seq_lens,
    )
    return q.to(DEVICE, dtype), kv.to(DEVICE, dtype), meta


CASES = [
    # query lens, context lens, heads, kv heads, head dim, block size, window
    ([1, 1, 1, 1], [5, 40, 17, 100], 8, 2, 64, 16, None),  # decode, GQA 4
    ([7, 1, 33, 1], [0, 63, 12, 7], 4, 4, 32, 16, None),  # mixed prefill + decode, MHA
    ([20, 1, 70], [30, 90, 0], 4, 1, 16, 16, 48),  # MQA + sliding window
    ([3, 50], [0, 10], 9, 3, 64, 8, None),  # SmolLM2's shape, small blocks
]


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(case: tuple) -> None:
    query_lens, context_lens, heads, kv_heads, head_dim, block_size, window = case
    q, kv, meta = random_batch(
        query_lens,
        context_lens,
        heads,
        kv_heads,
        head_dim,
        block_size,
        torch.float32,
        seed=len(query_lens),
    )
    scale = head_dim**-0.5
    expected = paged_attention_reference(q, kv, meta, scale, window)
    out = triton_attention.paged_attention_triton(q, kv, meta, scale, window)
    # float32 inputs get IEEE float32 dots on GPUs too (not tf32).
    tol = 1e-4 if DEVICE.type == "cuda" else 1e-5
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("splits", [2, 4])
def test_split_context_decode_matches_reference(splits: int) -> None:
    """Decodes with each context split in parts, combined (flash-decoding); one context is
    shorter than the parts, and one request is a padding row (no context)."""
    q, kv, meta = random_batch([1, 1, 1, 1], [5, 140, 17, 0], 8, 2, 64, 16, torch.float32, 9)
    meta.seq_lens[3] = 0  # a graph's padding row: nothing to attend
    meta.seq_lens_cpu[3] = 0
    scale = 64**-0.5
    expected = paged_attention_reference(q, kv, meta, scale, None)
    out = triton_attention.paged_attention_triton(q, kv, meta, scale, None, splits=splits)
    tol = 1e-4 if DEVICE.type == "cuda" else 1e-5
    torch.testing.assert_close(out[:3], expected[:3], atol=tol, rtol=tol)
    assert torch.equal(out[3], torch.zeros_like(out[3]))


@pytest.mark.gpu
def test_kernel_bf16_matches_reference() -> None:
    q, kv, meta = random_batch(
        [1, 9, 1, 300], [700, 4, 33, 0], 32, 8, 128, 16, torch.bfloat16, seed=5
    )
    expected = paged_attention_reference(q.float(), kv.float(), meta, 128**-0.5, None)
    out = triton_attention.paged_attention_triton(q, kv, meta, 128**-0.5, None)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_padded_tile_table_matches_reference() -> None:
    """A mixed batch's graph launches a fixed grid over a padded tile table: the tiles past
    the device count must do nothing, and the valid ones give the reference result. The
    padding holds stale entries of real requests (as the buffers do after earlier steps)."""
    from runtime_service.kernels.attention_tiles import max_tiles, prefill_block_q, tile_table

    query_lens, context_lens = [7, 1, 33, 1], [0, 63, 12, 7]
    q, kv, meta = random_batch(query_lens, context_lens, 8, 2, 64, 16, torch.float32, seed=4)
    block_q = prefill_block_q(8, 2)
    seqs, index = tile_table(query_lens, block_q)
    size = max_tiles(64, 8, block_q)
    assert size > len(seqs)
    stale_seq = torch.full((size,), 2, dtype=torch.int32)
    stale_index = torch.zeros(size, dtype=torch.int32)
    stale_seq[: len(seqs)] = torch.from_numpy(seqs)
    stale_index[: len(seqs)] = torch.from_numpy(index)
    count = torch.tensor([len(seqs)], dtype=torch.int32, device=DEVICE)
    meta.backend_cache[f"tiles/{block_q}"] = (stale_seq.to(DEVICE), stale_index.to(DEVICE), count)
    scale = 64**-0.5
    expected = paged_attention_reference(q, kv, meta, scale, None)
    out = triton_attention.paged_attention_triton(q, kv, meta, scale, None)
    tol = 1e-4 if DEVICE.type == "cuda" else 1e-5
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
