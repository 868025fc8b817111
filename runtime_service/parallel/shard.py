"""Cutting an engine's fused weights (and LoRA adapters) into one rank's share, at load.

Column-parallel layers (qkv, gate_up) keep the output rows of this rank's heads / columns;
row-parallel layers (o, down) keep the input columns that those outputs feed, and their
partial products are summed over the ranks by one all-reduce (model.py). Quantized weights
are cut with their scales (linear.py has the layouts):

- int8 / fp8: per-output-row scales follow the rows of a column-parallel layer; a
  row-parallel layer keeps all of its rows, so all of its scales.
- int4: scales and zeros [out, G] follow rows like the weight; for a row-parallel layer the
  groups follow the columns. Where a rank's columns cut a group (a tiny model's 64-wide group
  over 2 ranks), the rank's layer gets finer groups, each repeating its group's scale and
  zero: the dequantized weight is exactly the slice of the whole one.

Biases of row-parallel layers stay on rank 0 only (the all-reduce adds them once); an AWQ
act_scale [in] follows the input columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from runtime_service.models.config import ModelConfig
from runtime_service.parallel.plan import ShardPlan

if TYPE_CHECKING:
    from runtime_service.engine.lora.adapter import LoRAAdapter

COLUMN_PARALLEL = ("qkv", "gate_up")
ROW_PARALLEL = ("o", "down")


def qkv_rows(config: ModelConfig, plan: ShardPlan) -> torch.Tensor:
    """Rows of the fused qkv output this rank computes: its q heads, then its k and v heads."""
    d = config.head_dim
    q0, q1 = plan.q_heads
    k0, k1 = plan.kv_heads
    q_size, kv_size = config.q_size, config.kv_size
    return torch.cat(
        [
            torch.arange(q0 * d, q1 * d),
            torch.arange(q_size + k0 * d, q_size + k1 * d),
            torch.arange(q_size + kv_size + k0 * d, q_size + kv_size + k1 * d),
        ]
    )


def gate_up_rows(config: ModelConfig, plan: ShardPlan) -> torch.Tensor:
    a, b = plan.intermediate
    n = config.intermediate_size
    return torch.cat([torch.arange(a, b), torch.arange(n + a, n + b)])


def input_columns(config: ModelConfig, plan: ShardPlan, fused: str) -> tuple[int, int]:
    """[start, end) of the input features of row-parallel layer `fused` on this rank."""
    if fused == "o":
        return plan.q_heads[0] * config.head_dim, plan.q_heads[1] * config.head_dim
    return plan.intermediate


def shard_tensor(
    config: ModelConfig, name: str, t: torch.Tensor, quantization: str, plan: ShardPlan
) -> torch.Tensor | None:
    """This rank's part of one engine tensor (None: the rank holds none of it). Each tensor is
    cut on its own, so a loader can stream them: one whole tensor in memory at a time."""
    if name in ("embed.weight", "lm_head.weight"):
        return vocab_shard(t, plan)
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "layers" or parts[2] not in (*COLUMN_PARALLEL, *ROW_PARALLEL):
        return t  # norms: replicated
    fused, key = parts[2], parts[3]
    if fused in COLUMN_PARALLEL:
        if key == "act_scale":  # input features: every rank has the whole input
            return t
        rows = qkv_rows(config, plan) if fused == "qkv" else gate_up_rows(config, plan)
        return t[rows.to(t.device)].contiguous()
    a, b = input_columns(config, plan, fused)
    if key == "bias":
        return t if plan.rank == 0 else None  # added once, by the all-reduce
    if key == "act_scale":
        return t[a:b].contiguous()
    if quantization == "int4":
        if a % 2 or b % 2:
            raise ValueError(f"int4 columns [{a}, {b}) of {name} must start and end on a byte")
        if key == "weight":
            return t[:, a // 2 : b // 2].contiguous()
        # scales / zeros [out, G]: groups follow the columns, finer where a rank's cut one.
        in_features = config.q_size if fused == "o" else config.intermediate_size
        group = in_features // t.shape[1]
        fine = math.gcd(group, a, b - a)  # a local group never straddles a global one
        owner = (a + torch.arange(0, b - a, fine)) // group
        return t[:, owner.to(t.device)].contiguous()
    if key == "weight":
        return t[:, a:b].contiguous()
    return t  # int8 / fp8 per-row scales: the rank keeps every row


def shard_weights(
    config: ModelConfig,
    weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    quantization: str,
    plan: ShardPlan,
) -> dict[str, torch.Tensor]:
    """This rank's share of an engine's fused weights (same names, smaller tensors)."""
    items = weights.items() if isinstance(weights, Mapping) else weights
    out = {}
    for name, t in items:
        part = shard_tensor(config, name, t, quantization, plan)
        if part is not None:
            out[name] = part
    return out


def vocab_shard(table: torch.Tensor, plan: ShardPlan) -> torch.Tensor:
    """Rows [vocab start, end) of an embedding / LM head, padded with zero rows to
    vocab_per_rank (padding rows are never looked up, and their logits are cut off)."""
    a, b = plan.vocab
    shard = torch.zeros(plan.vocab_per_rank, table.shape[1], dtype=table.dtype, device=table.device)
    shard[: b - a] = table[a:b]
    return shard


def shard_adapter(adapter: LoRAAdapter, config: ModelConfig, plan: ShardPlan) -> LoRAAdapter:
    """The adapter cut like the layers it changes: B's rows for qkv / gate_up, A's input
    columns for o / down (the rank's partial LoRA product is summed by the same all-reduce)."""
    rows = {"qkv": qkv_rows(config, plan), "gate_up": gate_up_rows(config, plan)}
    layers = {}
    for (index, fused), w in adapter.layers.items():
        if fused in rows:
            w = replace(w, b=w.b[rows[fused]].contiguous())
        else:
            a, b = input_columns(config, plan, fused)
            w = replace(w, a=w.a[..., a:b].contiguous())
        layers[(index, fused)] = w
    return replace(adapter, layers=layers)
