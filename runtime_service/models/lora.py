"""LoRA in the model: device slots of stacked adapter weights, and the layers that use them.

`attach_lora(model, num_slots, max_rank)` wraps each fused linear layer (qkv, o, gate_up,
down) of every decoder layer in a LoRALinear that owns that layer's slot tensors, and returns
the LoRASlots that fill them. The model's code is unchanged: a LoRALinear computes the base
layer, then adds the grouped LoRA product for the tokens of this step that use an adapter
(LoRASlots.batch, set by the model runner before each forward). A step where no token uses an
adapter runs the base layers alone, so base-model outputs are exactly those without LoRA.
"""

from __future__ import annotations

from itertools import accumulate
from typing import TYPE_CHECKING

import torch
from torch import nn

from runtime_service.kernels.lora_batch import LoRABatch
from runtime_service.kernels.lora_tables import StaticLoRABatch
from runtime_service.kernels.lora_torch import SlotTable, add_lora
from runtime_service.kernels.lora_triton import add_lora_triton
from runtime_service.models.config import ModelConfig
from runtime_service.models.linear import Linear
from runtime_service.models.weights import FUSED_LINEARS, fused_output_sizes

if TYPE_CHECKING:
    from runtime_service.engine.lora.adapter import LoRAAdapter
    from runtime_service.models.llama import LlamaModel

# Where each fused linear layer sits in a DecoderLayer: (attribute of the layer, its name).
_FUSED_OWNERS = (("attn", "qkv"), ("attn", "o"), ("mlp", "gate_up"), ("mlp", "down"))


def fused_input_size(config: ModelConfig, fused: str) -> int:
    """Input features of fused layer `fused` (qkv, o, gate_up, down)."""
    return {
        "qkv": config.hidden_size,
        "o": config.q_size,
        "gate_up": config.hidden_size,
        "down": config.intermediate_size,
    }[fused]


class LoRASlots:
    """Per-slot state shared by every LoRALinear: rank, scaling, the parts each fused layer
    changes (one SlotTable per fused layer, sharing the lists), and this step's LoRABatch."""

    def __init__(self, num_slots: int, max_rank: int, device: torch.device) -> None:
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.ranks = [0] * num_slots
        self.scalings = [0.0] * num_slots
        self.scalings_tensor = torch.zeros(num_slots, device=device)
        self.parts: dict[str, list[tuple[int, ...]]] = {f: [()] * num_slots for f in FUSED_LINEARS}
        self.tables = {
            f: SlotTable(self.ranks, self.scalings, self.scalings_tensor, parts)
            for f, parts in self.parts.items()
        }
        self.layers: list[LoRALinear] = []
        self.batch: LoRABatch | StaticLoRABatch | None = None

    def write(self, slot: int, adapter: LoRAAdapter) -> None:
        """Copies an adapter from host memory into `slot` (asynchronously from pinned memory
        on CUDA, ordered before the next forward on the same stream)."""
        for layer in self.layers:
            layer.a[slot].zero_()
            layer.b[slot].zero_()
            weights = adapter.layers.get((layer.layer_index, layer.fused))
            if weights is not None:
                r = adapter.rank
                layer.a[slot, :, :r].copy_(weights.a, non_blocking=True)
                layer.b[slot, :, :r].copy_(weights.b, non_blocking=True)
        self.ranks[slot] = adapter.rank
        self.scalings[slot] = adapter.spec.scaling
        self.scalings_tensor[slot] = adapter.spec.scaling
        for fused, per_slot in self.parts.items():
            per_slot[slot] = adapter.parts.get(fused, ())

    def clear(self, slot: int) -> None:
        """Marks `slot` empty (its tensors are overwritten when it is next filled)."""
        self.ranks[slot] = 0
        self.scalings[slot] = 0.0
        self.scalings_tensor[slot] = 0.0
        for per_slot in self.parts.values():
            per_slot[slot] = ()

    @property
    def num_bytes(self) -> int:
        return sum(layer.a.nbytes + layer.b.nbytes for layer in self.layers)


class LoRALinear(nn.Module):
    """A fused linear layer plus the LoRA products of the adapters in the device slots."""

    def __init__(
        self,
        base: Linear,
        config: ModelConfig,
        layer_index: int,
        fused: str,
        slots: LoRASlots,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.base = base
        self.layer_index = layer_index
        self.fused = fused
        self.slots = slots
        sizes = fused_output_sizes(config, fused)
        self.offsets = (0, *accumulate(sizes))
        device = base.weight.device
        n, r = slots.num_slots, slots.max_rank
        in_features = fused_input_size(config, fused)
        self.a = nn.Buffer(
            torch.zeros(n, len(sizes), r, in_features, dtype=dtype, device=device),
            persistent=False,
        )
        self.b = nn.Buffer(
            torch.zeros(n, sum(sizes), r, dtype=dtype, device=device), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        batch = self.slots.batch
        if isinstance(batch, StaticLoRABatch):  # captured in a graph: the same launches always
            add_lora_triton(y, x, self.a, self.b, self.offsets, batch, self.slots.scalings_tensor)
        elif batch is not None:
            table = self.slots.tables[self.fused]
            if not any(table.parts[slot] for _, _, slot in batch.segments):
                return y  # no adapter of the step changes this layer
            if x.is_cuda:  # one launch for all adapters (and one per part to expand)
                add_lora_triton(y, x, self.a, self.b, self.offsets, batch, table.scalings_tensor)
            else:
                add_lora(y, x, self.a, self.b, self.offsets, batch, table)
        return y


def prescaled_layers(model: LlamaModel) -> tuple[str, ...]:
    """Fused layers whose input arrives already divided by activation scales: an int4 engine
    whose builder folded its AWQ scales into the RMSNorm before qkv / gate_up (their Linear
    then has no act_scale). A LoRA A on such a layer would need those scales, which the
    engine does not keep. Call before attach_lora."""
    if model.quantization != "int4":
        return ()
    layer = model.layers[0]
    return tuple(
        fused
        for owner, fused in _FUSED_OWNERS
        if getattr(getattr(layer, owner), fused).act_scale is None and fused in ("qkv", "gate_up")
    )


def attach_lora(model: LlamaModel, num_slots: int, max_rank: int) -> LoRASlots:
    """Wraps every fused linear layer of `model` in a LoRALinear with `num_slots` slots of
    rank up to `max_rank` (on the model's device, in its dtype); returns their shared state."""
    slots = LoRASlots(num_slots, max_rank, model.device)
    for i, layer in enumerate(model.layers):
        for owner_name, fused in _FUSED_OWNERS:
            owner = getattr(layer, owner_name)
            base = getattr(owner, fused)
            wrapped = LoRALinear(base, model.config, i, fused, slots, model.dtype)
            setattr(owner, fused, wrapped)
            slots.layers.append(wrapped)
    return slots
