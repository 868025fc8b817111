"""How a tensor-parallel rank's share is cut (no processes): head splits, quantized layers
cut with their scales, vocabulary shards. The split forward itself is checked end to end in
test_tensor_parallel.py."""

from __future__ import annotations

import pytest
import torch

from llmserve.errors import FailedPrecondition
from runtime_service.models.config import ModelConfig
from runtime_service.models.linear import Linear, pack_int4
from runtime_service.parallel.plan import make_plan
from runtime_service.parallel.shard import input_columns, qkv_rows, shard_weights, vocab_shard


def config(heads: int, kv: int, head_dim: int = 16, intermediate: int = 96) -> ModelConfig:
    return ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=101,
        hidden_size=heads * head_dim,
        intermediate_size=intermediate,
        num_layers=1,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        rms_norm_eps=1e-6,
        max_position_embeddings=64,
        rope_theta=10000.0,
    )


@pytest.mark.parametrize(
    ("heads", "kv", "world", "q_runs", "kv_runs"),
    [
        (9, 3, 2, [(0, 6), (6, 9)], [(0, 2), (2, 3)]),  # SmolLM2: whole KV groups, uneven
        (4, 2, 2, [(0, 2), (2, 4)], [(0, 1), (1, 2)]),
        (4, 1, 2, [(0, 2), (2, 4)], [(0, 1), (0, 1)]),  # MQA: the KV head on both ranks
        (8, 2, 4, [(0, 2), (2, 4), (4, 6), (6, 8)], [(0, 1), (0, 1), (1, 2), (1, 2)]),
        (9, 3, 4, [(0, 2), (2, 3), (3, 6), (6, 9)], [(0, 1), (0, 1), (1, 2), (2, 3)]),
    ],
)
def test_heads_split_by_kv_group(
    heads: int, kv: int, world: int, q_runs: list, kv_runs: list
) -> None:
    c = config(heads, kv)
    plans = [make_plan(c, r, world) for r in range(world)]
    assert [p.q_heads for p in plans] == q_runs
    assert [p.kv_heads for p in plans] == kv_runs
    group = heads // kv
    for p in plans:  # every rank's q heads use exactly its KV heads, as in the whole model
        assert {h // group for h in range(*p.q_heads)} == set(range(*p.kv_heads))
        local = p.local_config(c)
        assert local.num_heads % local.num_kv_heads == 0
    assert sum(p.intermediate[1] - p.intermediate[0] for p in plans) == c.intermediate_size


def test_impossible_splits_name_the_limit() -> None:
    with pytest.raises(FailedPrecondition, match=r"tensor_parallel_size \(8\) must be <= .*\(4\)"):
        make_plan(config(4, 2), 0, 8)
    with pytest.raises(FailedPrecondition, match=r"must be <= intermediate_size \(2\)"):
        make_plan(config(4, 2, intermediate=2), 0, 4)
    # Up to num_heads ranks always fit: 3 ranks over 2 KV heads of 2 q heads each.
    assert [make_plan(config(4, 2), r, 3).q_heads for r in range(3)] == [(0, 1), (1, 2), (2, 4)]


def int4_layer(out: int, num_in: int, group: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (out, num_in), generator=g)
    return {
        "weight": pack_int4(q),
        "scales": torch.rand(out, num_in // group, generator=g) + 0.1,
        "zeros": torch.randint(0, 16, (out, num_in // group), generator=g).float(),
        "act_scale": torch.rand(num_in, generator=g) + 0.5,
        "bias": torch.randn(out, generator=g),
    }


@pytest.mark.parametrize(("heads", "kv", "world"), [(4, 2, 2), (9, 3, 2), (4, 1, 2), (9, 3, 4)])
@pytest.mark.parametrize("quantization", ["none", "int8", "int4"])
def test_every_rank_holds_exactly_its_slice_of_each_layer(
    heads: int, kv: int, world: int, quantization: str
) -> None:
    """Dequantized, each rank's qkv is the whole one's rows of its heads and its o the whole
    one's columns; int4 groups (64 wide here) are cut where the ranks' columns cut them."""
    c = config(heads, kv)
    qkv_out, o_in = c.q_size + 2 * c.kv_size, c.q_size
    g = torch.Generator().manual_seed(1)

    def layer(out: int, num_in: int, seed: int) -> dict[str, torch.Tensor]:
        if quantization == "int4":
            return int4_layer(out, num_in, 16 if num_in % 64 else 64, seed)
        w = torch.randn(out, num_in, generator=g)
        if quantization == "int8":
            return {
                "weight": torch.randint(-127, 128, (out, num_in), generator=g).to(torch.int8),
                "scales": torch.rand(out, generator=g),
                "bias": torch.randn(out, generator=g),
            }
        return {"weight": w, "bias": torch.randn(out, generator=g)}

    whole = {
        **{f"layers.0.qkv.{k}": t for k, t in layer(qkv_out, c.hidden_size, 2).items()},
        **{f"layers.0.o.{k}": t for k, t in layer(c.hidden_size, o_in, 3).items()},
        "embed.weight": torch.randn(c.vocab_size, c.hidden_size, generator=g),
    }

    def dense(weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        tensors = {k.split(".")[-1]: t for k, t in weights.items() if k.startswith(name + ".")}
        return Linear(quantization, tensors).dequantized_weight(torch.float32)

    for rank in range(world):
        plan = make_plan(c, rank, world)
        shard = shard_weights(c, whole, quantization, plan)
        rows = qkv_rows(c, plan)
        assert torch.equal(dense(shard, "layers.0.qkv"), dense(whole, "layers.0.qkv")[rows])
        assert torch.equal(shard["layers.0.qkv.bias"], whole["layers.0.qkv.bias"][rows])
        a, b = input_columns(c, plan, "o")
        assert torch.equal(dense(shard, "layers.0.o"), dense(whole, "layers.0.o")[:, a:b])
        assert ("layers.0.o.bias" in shard) == (rank == 0)  # added once, by the all-reduce
        if quantization == "int4":
            assert torch.equal(shard["layers.0.o.act_scale"], whole["layers.0.o.act_scale"][a:b])
        start, end = plan.vocab
        assert torch.equal(shard["embed.weight"][: end - start], whole["embed.weight"][start:end])


def test_vocab_shards_are_padded_to_one_size() -> None:
    c = config(4, 2)
    table = torch.arange(c.vocab_size, dtype=torch.float32)[:, None].repeat(1, 3)
    shards = [vocab_shard(table, make_plan(c, r, 2)) for r in range(2)]
    assert [s.shape[0] for s in shards] == [51, 51]
    assert torch.equal(torch.cat(shards)[: c.vocab_size], table)
    assert torch.count_nonzero(torch.cat(shards)[c.vocab_size :]) == 0
