"""ParallelLlamaModel: one rank's share of a Llama-family model, and the collectives it needs.

Built from the rank's shard of the weights (shard.py) with the rank's shapes (plan.py), it is
an ordinary LlamaModel plus:

- an all-reduce after each attention block and each MLP block (forward hooks on them: the
  sum of the row-parallel o / down outputs, LoRA products included, since the LoRA layers sit
  inside those blocks);
- a vocabulary-parallel embedding (each rank looks up the ids in its rows, zeros elsewhere,
  and an all-reduce sums them) and LM head (each rank's logits of its rows, gathered on rank 0
  in rank order and cut back to the vocabulary);
- for fp8 engines, row-parallel o / down quantize each token's activations with the scale of
  the whole row (an all-reduce of the per-rank maxima), as the unsplit layer does;
- on rank 0, a `driver` that hands each forward and each LM-head product to the workers
  first (workers.py), so that they run the same computation on their shares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from runtime_service.kernels.fp8 import FP8_MAX, fp8_compute_supported
from runtime_service.models.attention import AttentionMetadata
from runtime_service.models.config import ModelConfig
from runtime_service.models.linear import Linear
from runtime_service.models.llama import LlamaModel, Weights
from runtime_service.parallel.group import ParallelGroup
from runtime_service.parallel.plan import ShardPlan

if TYPE_CHECKING:
    from runtime_service.parallel.lora import ShardedLoRASlots


class Driver(Protocol):
    """Rank 0's side of the workers (workers.py)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        lora: object,
    ) -> None: ...

    def logits(self, hidden: torch.Tensor) -> None: ...


class RowParallelFP8(nn.Module):
    """An fp8 o / down whose input is split over the ranks: per-token activation scales
    come from the whole row (max over the ranks), so the quantized values are the unsplit
    layer's. The partial product is summed by the block's all-reduce."""

    def __init__(self, linear: Linear, group: ParallelGroup) -> None:
        super().__init__()
        self.linear = linear
        self.group = group

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def act_scale(self) -> torch.Tensor | None:
        return self.linear.act_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lin = self.linear
        if lin.act_scale is not None:
            x = x * lin.act_scale.to(x.dtype)
        shape = x.shape
        xf = x.reshape(-1, shape[-1]).float()
        amax = xf.abs().amax(dim=-1, keepdim=True)
        self.group.all_reduce_max(amax)
        scales = amax.clamp(min=1e-12) / FP8_MAX
        q = (xf / scales).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        if fp8_compute_supported(x.device) and x.dtype != torch.float32:
            y = torch._scaled_mm(
                q,
                lin.weight.t(),
                scale_a=scales,
                scale_b=lin.scales[None, :],
                bias=lin.bias,
                out_dtype=x.dtype,
            )
        else:
            y = F.linear(q.to(torch.float32), lin.weight.to(torch.float32)) * scales * lin.scales
            y = y.to(x.dtype) if lin.bias is None else (y + lin.bias).to(x.dtype)
        return y.reshape(*shape[:-1], -1)


class ParallelLlamaModel(LlamaModel):
    def __init__(
        self,
        full_config: ModelConfig,
        plan: ShardPlan,
        weights: Weights,
        quantization: str,
        group: ParallelGroup,
        max_positions: int | None = None,
    ) -> None:
        super().__init__(plan.local_config(full_config), weights, quantization, max_positions)
        self.full_config = full_config
        self.plan = plan
        self.group = group
        self.driver: Driver | None = None
        self.lora_slots: ShardedLoRASlots | None = None
        for layer in self.layers:
            if quantization == "fp8":
                layer.attn.o = RowParallelFP8(layer.attn.o, group)
                layer.mlp.down = RowParallelFP8(layer.mlp.down, group)
            layer.attn.register_forward_hook(self._all_reduce)
            layer.mlp.register_forward_hook(self._all_reduce)

    def pack_for_cpu(self, rows: int) -> bool:
        """Not for sharded models: their ranks must run the same products (and their LM head
        is read as a plain tensor here)."""
        return False

    def _all_reduce(self, module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(output)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        start, end = self.plan.vocab
        inside = (input_ids >= start) & (input_ids < end)
        local = torch.where(inside, input_ids - start, 0)
        h = F.embedding(local, self.embed).masked_fill_(~inside[:, None], 0)
        return self.group.all_reduce(h)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        if self.driver is not None:
            lora = None if self.lora_slots is None else self.lora_slots.batch
            self.driver.forward(input_ids, positions, kv_caches, meta, lora)
        h = self.embed_tokens(input_ids)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h, residual = layer(h, residual, positions, self.rope, kv_cache, meta)
        return self.norm.add_forward(h, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [N, vocab] on rank 0 (this rank's columns on the others)."""
        if self.driver is not None:
            self.driver.logits(hidden)
        local = F.linear(hidden, self.lm_head).float()
        parts = self.group.gather(local)
        if parts is None:
            return local
        return torch.cat(parts, dim=-1)[:, : self.config.vocab_size]

    def attach_lora(self, num_slots: int, max_rank: int) -> ShardedLoRASlots:
        """LoRA slots of this rank's shapes; adapters written to them are cut to this rank
        (and, on rank 0, sent whole to the workers first)."""
        from runtime_service.parallel.lora import attach_sharded_lora

        self.lora_slots = attach_sharded_lora(self, num_slots, max_rank)
        return self.lora_slots
