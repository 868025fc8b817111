"""ShardPlan: the heads, MLP columns and vocabulary rows one tensor-parallel rank holds.

Attention heads are split by KV-head group, so that every rank runs ordinary grouped-query
attention on whole groups (its q heads map to its KV heads exactly as in the whole model):

- num_kv_heads >= world_size: the KV heads are cut into world_size contiguous runs (as even
  as they go: SmolLM2's 3 KV heads over 2 ranks give 2 + 1), each with its q heads.
- num_kv_heads < world_size: each rank holds one KV head (a head is replicated on the ranks
  that share it) and a contiguous slice of that head's q heads.

Either way the split is exact: a q head is computed on exactly one rank from the same K/V it
uses in the whole model. The MLP's intermediate columns and the vocabulary are cut into
contiguous, even runs (the vocabulary padded to world_size * ceil(vocab / world_size)).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llmserve.errors import FailedPrecondition
from runtime_service.models.config import ModelConfig


def even_runs(total: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` contiguous runs covering range(total), sizes differing by <= 1."""
    base, extra = divmod(total, parts)
    runs, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        runs.append((start, end))
        start = end
    return runs


@dataclass(frozen=True, slots=True)
class ShardPlan:
    rank: int
    world_size: int
    q_heads: tuple[int, int]  # [start, end) of the global q heads on this rank
    kv_heads: tuple[int, int]  # [start, end) of the global KV heads on this rank
    intermediate: tuple[int, int]  # [start, end) of the MLP's intermediate columns
    vocab: tuple[int, int]  # [start, end) of the real vocabulary rows on this rank
    vocab_per_rank: int  # rows of every rank's (padded) embedding shard

    @property
    def num_q_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    def local_config(self, config: ModelConfig) -> ModelConfig:
        """The shapes this rank's layers have (vocab_size stays the whole vocabulary's)."""
        return replace(
            config,
            num_heads=self.num_q_heads,
            num_kv_heads=self.num_kv_heads,
            intermediate_size=self.intermediate[1] - self.intermediate[0],
        )


def make_plan(config: ModelConfig, rank: int, world_size: int) -> ShardPlan:
    """This rank's share; FailedPrecondition (naming the limit) for a split that cannot be made."""
    heads, kv = config.num_heads, config.num_kv_heads
    group = heads // kv
    if world_size > heads:
        raise FailedPrecondition(
            f"tensor_parallel_size ({world_size}) must be <= the model's num_attention_heads"
            f" ({heads})"
        )
    if world_size > config.intermediate_size:
        raise FailedPrecondition(
            f"tensor_parallel_size ({world_size}) must be <= intermediate_size"
            f" ({config.intermediate_size})"
        )
    if kv >= world_size:
        kv_run = even_runs(kv, world_size)[rank]
        q_run = (kv_run[0] * group, kv_run[1] * group)
    else:
        # Ranks shared out over the KV heads; the ranks of one head split its q heads.
        ranks_of = even_runs(world_size, kv)
        head = next(h for h, (a, b) in enumerate(ranks_of) if a <= rank < b)
        first, last = ranks_of[head]
        # NOTE: world_size <= num_heads puts at most ceil(world_size / kv) <= group ranks on a
        # head, so each of them gets at least one q head.
        start, end = even_runs(group, last - first)[rank - first]
        kv_run = (head, head + 1)
        q_run = (head * group + start, head * group + end)
    per_rank = -(-config.vocab_size // world_size)
    vocab_start = min(rank * per_rank, config.vocab_size)
    return ShardPlan(
        rank=rank,
        world_size=world_size,
        q_heads=q_run,
        kv_heads=kv_run,
        intermediate=even_runs(config.intermediate_size, world_size)[rank],
        vocab=(vocab_start, min(vocab_start + per_rank, config.vocab_size)),
        vocab_per_rank=per_rank,
    )
