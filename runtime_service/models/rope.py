"""Rotary position embeddings: default, linear, Llama-3.1 and YaRN frequency schedules.

cos/sin are computed in float32 for every position up to the model's limit once, then looked
up by position; the rotation is the rotate-half (GPT-NeoX) form the Llama family uses.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from runtime_service.models.config import ModelConfig


def _default_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, p: dict) -> torch.Tensor:
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(theta: float, dim: int, p: dict, max_positions: int) -> tuple[torch.Tensor, float]:
    factor = p.get("factor") or max_positions / p["original_max_position_embeddings"]
    original = p["original_max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    interpolated, extrapolated = 1.0 / (factor * pos_freqs), 1.0 / pos_freqs
    inv_freq = interpolated * (1 - extrapolation) + extrapolated * extrapolation
    return inv_freq, float(attention_factor)


def inverse_frequencies(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim/2], attention scaling of cos/sin) for the config's rope type."""
    p = config.rope_scaling
    rope_type = p.get("rope_type", "default")
    dim = config.head_dim
    if rope_type == "yarn":
        return _yarn(config.rope_theta, dim, p, config.max_position_embeddings)
    inv_freq = _default_inv_freq(config.rope_theta, dim)
    if rope_type == "linear":
        inv_freq = inv_freq / p["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, p)
    return inv_freq, 1.0


class RotaryEmbedding(torch.nn.Module):
    """cos/sin tables for positions [0, max_positions), applied to q and k by position."""

    def __init__(self, config: ModelConfig, max_positions: int, device: torch.device) -> None:
        super().__init__()
        inv_freq, scaling = inverse_frequencies(config)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", (emb.cos() * scaling).to(device), persistent=False)
        self.register_buffer("sin", (emb.sin() * scaling).to(device), persistent=False)

    def forward(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        cache: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, nq, d], k [T, nkv, d] rotated for positions [T]. `cache`: a per-step dict
        (AttentionMetadata.backend_cache) where the positions' cos/sin are looked up once
        for every layer of the step."""
        key = f"rope/{q.dtype}"
        cos_sin = None if cache is None else cache.get(key)
        if cos_sin is None:
            cos_sin = (
                self.cos[positions].unsqueeze(1).to(q.dtype),
                self.sin[positions].unsqueeze(1).to(q.dtype),
            )
            if cache is not None:
                cache[key] = cos_sin
        cos, sin = cos_sin
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin

    def rotate(
        self, positions: torch.Tensor, x: torch.Tensor, cache: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """x [T, heads, d] rotated for positions [T]: the values of `forward`'s, in two
        multiplies, a roll and an add (rotate_half(x) * sin is roll(x) * sin with the sign of
        rotate_half's negated half moved onto sin, which rounds the same)."""
        key = f"rope-roll/{x.dtype}"
        cos_sin = None if cache is None else cache.get(key)
        if cos_sin is None:
            half = x.shape[-1] // 2
            sin = self.sin[positions]
            sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
            cos_sin = (self.cos[positions].unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype))
            if cache is not None:
                cache[key] = cos_sin
        cos, sin = cos_sin
        return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
