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
from collections.abc import Mapping
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


def _column_parallel(tensors: dict[str, torch.Tensor], rows: torch.Tensor) -> None:
    for key in ("weight", "scales", "zeros", "bias"):
        if key in tensors:
            tensors[key] = tensors[key][rows.to(tensors[key].device)].contiguous()


def _row_parallel(
    tensors: dict[str, torch.Tensor], quantization: str, cols: tuple[int, int], rank: int
) -> None:
    a, b = cols
    if quantization == "int4":
        if a % 2 or b % 2:
            raise ValueError(f"int4 columns [{a}, {b}) must start and end on a byte")
        in_features = tensors["weight"].shape[1] * 2
        group = in_features // tensors["scales"].shape[1]
        tensors["weight"] = tensors["weight"][:, a // 2 : b // 2].contiguous()
        fine = math.gcd(group, a, b - a)  # a local group never straddles a global one
        owner = (a + torch.arange(0, b - a, fine)) // group
        for key in ("scales", "zeros"):
            tensors[key] = tensors[key][:, owner.to(tensors[key].device)].contiguous()
    else:
        tensors["weight"] = tensors["weight"][:, a:b].contiguous()
    if "act_scale" in tensors:
        tensors["act_scale"] = tensors["act_scale"][a:b].contiguous()
    if rank != 0:
        tensors.pop("bias", None)


def shard_weights(
    config: ModelConfig, weights: Mapping[str, torch.Tensor], quantization: str, plan: ShardPlan
) -> dict[str, torch.Tensor]:
    """This rank's share of an engine's fused weights (same names, smaller tensors)."""
    out: dict[str, torch.Tensor] = {}
    rows = {"qkv": qkv_rows(config, plan), "gate_up": gate_up_rows(config, plan)}
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in weights.items():
        parts = name.split(".")
        if (
            len(parts) == 4
            and parts[0] == "layers"
            and parts[2] in (*COLUMN_PARALLEL, *ROW_PARALLEL)
        ):
            layers.setdefault(".".join(parts[:3]), {})[parts[3]] = t
        elif name in ("embed.weight", "lm_head.weight"):
            out[name] = vocab_shard(t, plan)
        else:
            out[name] = t  # norms: replicated
    for prefix, tensors in layers.items():
        fused = prefix.split(".")[2]
        tensors = dict(tensors)
        if fused in COLUMN_PARALLEL:
            _column_parallel(tensors, rows[fused])
        else:
            _row_parallel(tensors, quantization, input_columns(config, plan, fused), plan.rank)
        out.update({f"{prefix}.{k}": v for k, v in tensors.items()})
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
