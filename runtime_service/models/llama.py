"""The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2, Qwen3, SmolLM2) over a paged KV cache.

Built directly from the engine's fused weights (runtime_service/models/weights.py); the math
and its order follow transformers' implementation, so that float32 results agree with it to
rounding. Input is a flattened batch: T tokens from several requests, with their positions and
the AttentionMetadata saying which request each token belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from runtime_service.kernels.fused_ops import add_rms_norm, rope_write_kv, silu_mul
from runtime_service.models.attention import AttentionMetadata, paged_attention, write_kv
from runtime_service.models.config import ModelConfig
from runtime_service.models.linear import (
    Linear,
    cpu_packing_applies,
    packed_linear,
    reorder_for_cpu,
)
from runtime_service.models.rope import RotaryEmbedding

Weights = Mapping[str, torch.Tensor]


class RMSNorm(nn.Module):
    """weight * x / rms(x), computed in float32 and cast back before the weight, as HF does."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Buffer(weight, persistent=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            # One op for the float32 part (ATen computes it in float32 and casts once, as
            # below: bitwise the same on the CPU, ~4x fewer ops and no float32 copy kept).
            return self.weight * F.rms_norm(x, x.shape[-1:], None, self.eps)
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)

    def add_forward(
        self, x: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual) for x [T, hidden]; no residual: (norm(x), x).
        One fused kernel on CUDA."""
        if x.is_cuda:
            return add_rms_norm(x, self.weight, self.eps, residual)
        if residual is not None:
            x = x + residual
        return self(x), x


def _linear(weights: Weights, prefix: str, quantization: str) -> Linear:
    tensors = {
        key[len(prefix) + 1 :]: t for key, t in weights.items() if key.startswith(prefix + ".")
    }
    return Linear(quantization, tensors)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, weights: Weights, prefix: str, quant: str) -> None:
        super().__init__()
        self.config = config
        self.qkv = _linear(weights, f"{prefix}.qkv", quant)
        self.o = _linear(weights, f"{prefix}.o", quant)
        self.q_norm = self.k_norm = None
        if config.qk_norm:
            self.q_norm = RMSNorm(weights[f"{prefix}.q_norm.weight"], config.rms_norm_eps)
            self.k_norm = RMSNorm(weights[f"{prefix}.k_norm.weight"], config.rms_norm_eps)
        self.scale = config.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: RotaryEmbedding,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        c = self.config
        qkv = self.qkv(x)
        if not x.is_cuda and self.q_norm is None:
            return self.o(self._cpu_attention(qkv, positions, rope, kv_cache, meta))
        q, k, v = qkv.split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        q = q.view(-1, c.num_heads, c.head_dim)
        k = k.view(-1, c.num_kv_heads, c.head_dim)
        v = v.view(-1, c.num_kv_heads, c.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if q.is_cuda:  # q rotated in place, k rotated into the cache, v copied there
            rope_write_kv(q, k, v, positions, rope.cos, rope.sin, kv_cache, meta.slot_mapping)
            out = paged_attention(q, kv_cache, meta, self.scale, c.sliding_window)
        else:
            q, k = rope(positions, q, k, meta.backend_cache)
            write_kv(kv_cache, k, v, meta.slot_mapping)
            out = paged_attention(q, kv_cache, meta, self.scale, c.sliding_window, k, v)
        return self.o(out.reshape(-1, c.q_size))

    def _cpu_attention(
        self,
        qkv: torch.Tensor,
        positions: torch.Tensor,
        rope: RotaryEmbedding,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """The CPU path without q/k norms: q and k are adjacent in qkv, so their heads are
        rotated together in one pass (the same values as rotating each)."""
        c = self.config
        heads = c.num_heads + c.num_kv_heads
        qk = qkv[:, : c.q_size + c.kv_size].view(-1, heads, c.head_dim)
        q, k = rope.rotate(positions, qk, meta.backend_cache).split(
            [c.num_heads, c.num_kv_heads], dim=1
        )
        v = qkv[:, c.q_size + c.kv_size :].view(-1, c.num_kv_heads, c.head_dim)
        write_kv(kv_cache, k, v, meta.slot_mapping)
        out = paged_attention(q, kv_cache, meta, self.scale, c.sliding_window, k, v)
        return out.reshape(-1, c.q_size)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, weights: Weights, prefix: str, quant: str) -> None:
        super().__init__()
        self.gate_up = _linear(weights, f"{prefix}.gate_up", quant)
        self.down = _linear(weights, f"{prefix}.down", quant)
        self.intermediate_size = config.intermediate_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up(x)
        if gate_up.is_cuda:
            return self.down(silu_mul(gate_up))
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return self.down(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, weights: Weights, index: int, quant: str) -> None:
        super().__init__()
        prefix = f"layers.{index}"
        eps = config.rms_norm_eps
        self.attn_norm = RMSNorm(weights[f"{prefix}.attn_norm.weight"], eps)
        self.attn = Attention(config, weights, prefix, quant)
        self.mlp_norm = RMSNorm(weights[f"{prefix}.mlp_norm.weight"], eps)
        self.mlp = MLP(config, weights, prefix, quant)

    def forward(
        self,
        h: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        rope: RotaryEmbedding,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it); the next norm adds
        them (the residual add is fused into the norm that follows it)."""
        x, residual = self.attn_norm.add_forward(h, residual)
        h = self.attn(x, positions, rope, kv_cache, meta)
        x, residual = self.mlp_norm.add_forward(h, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm and LM head of one model."""

    def __init__(
        self,
        config: ModelConfig,
        weights: Weights,
        quantization: str = "none",
        max_positions: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.quantization = quantization
        self.embed = nn.Buffer(weights["embed.weight"], persistent=False)
        self.layers = nn.ModuleList(
            DecoderLayer(config, weights, i, quantization) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(weights["norm.weight"], config.rms_norm_eps)
        self.lm_head = (
            self.embed
            if config.tie_word_embeddings
            else nn.Buffer(weights["lm_head.weight"], persistent=False)
        )
        self.rope = RotaryEmbedding(
            config, max_positions or config.max_position_embeddings, self.embed.device
        )
        self._packed_lm_head: torch.Tensor | None = None

    def pack_for_cpu(self, rows: int) -> bool:
        """bfloat16 on a CPU with oneDNN's bfloat16 kernels: every dense linear and the LM
        head reordered once for products of about `rows` tokens (models/linear.py); the
        outputs are bitwise the same, the decode products 1.2-2x faster. False (nothing
        changed) elsewhere. The embedding keeps its own copy of a tied LM head."""
        if self._packed_lm_head is not None:  # a second runner over the same model
            return True
        if self.quantization != "none" or not cpu_packing_applies(self.embed):
            return False
        for module in self.modules():
            if isinstance(module, Linear) and not module.packed:
                module.pack_for_cpu(rows)
        self._packed_lm_head = reorder_for_cpu(self.lm_head, rows)
        if self.lm_head is not self.embed:  # untied: the plain copy is not needed
            self.lm_head = self._packed_lm_head
        return True

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm, for input_ids [T] at positions [T]."""
        h = F.embedding(input_ids, self.embed)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h, residual = layer(h, residual, positions, self.rope, kv_cache, meta)
        return self.norm.add_forward(h, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [N, vocab] for hidden states [N, hidden]."""
        if self._packed_lm_head is not None:
            return packed_linear(hidden, self._packed_lm_head).float()
        return F.linear(hidden, self.lm_head).float()
