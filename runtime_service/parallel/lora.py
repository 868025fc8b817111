"""LoRA slots of a tensor-parallel rank: each adapter written to them is cut like the layers.

Rank 0's LoRAManager reads and validates adapters against the whole model's shapes and
writes them to these slots; the slots send the whole adapter to the workers (which cut their
own share), then cut and write rank 0's. A step's LoRABatch travels with the forward.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from runtime_service.kernels.lora_batch import LoRABatch
from runtime_service.models.lora import _FUSED_OWNERS, LoRALinear, LoRASlots
from runtime_service.parallel.shard import shard_adapter

if TYPE_CHECKING:
    from runtime_service.engine.lora.adapter import LoRAAdapter
    from runtime_service.parallel.model import ParallelLlamaModel


class ShardedLoRASlots(LoRASlots):
    def __init__(self, model: ParallelLlamaModel, num_slots: int, max_rank: int) -> None:
        super().__init__(num_slots, max_rank, model.device)
        self.model = model

    def write(self, slot: int, adapter: LoRAAdapter) -> None:
        driver = self.model.driver
        if driver is not None:
            driver.lora_write(slot, adapter)  # type: ignore[attr-defined]
        super().write(slot, shard_adapter(adapter, self.model.full_config, self.model.plan))

    def clear(self, slot: int) -> None:
        driver = self.model.driver
        if driver is not None:
            driver.lora_clear(slot)  # type: ignore[attr-defined]
        super().clear(slot)


def attach_sharded_lora(
    model: ParallelLlamaModel, num_slots: int, max_rank: int
) -> ShardedLoRASlots:
    """models/lora.py's attach_lora with ShardedLoRASlots (LoRALinear takes the rank's shapes
    from model.config)."""
    slots = ShardedLoRASlots(model, num_slots, max_rank)
    for i, layer in enumerate(model.layers):
        for owner_name, fused in _FUSED_OWNERS:
            owner = getattr(layer, owner_name)
            wrapped = LoRALinear(getattr(owner, fused), model.config, i, fused, slots, model.dtype)
            setattr(owner, fused, wrapped)
            slots.layers.append(wrapped)
    return slots


def move_batch(batch: Any, device: torch.device) -> Any:
    """A LoRABatch (and its ShortSegments) with every tensor on `device` (the CPU to send it)."""
    if batch is None:
        return None
    changes = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = value.to(device)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = move_batch(value, device)
    return dataclasses.replace(batch, **changes)


__all__ = ["LoRABatch", "ShardedLoRASlots", "attach_sharded_lora", "move_batch"]
