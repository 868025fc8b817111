"""Activation-aware int4 quantization (AWQ, Lin et al. 2023): scale search and weight clipping.

Input channels that see large activations matter more to a layer's output. Per linear layer:

1. From calibration activations x [n, in], take s = mean|x|^alpha per input channel
   (normalized so that sqrt(max(s) * min(s)) = 1) and quantize W * s (column j times s_j),
   so that salient channels get finer steps. The layer then computes (x / s) @ Q(W * s)^T.
   alpha is grid-searched in [0, 1) for the smallest output error ||x W^T - (x/s) Q(W s)^T||²
   on the calibration sample; alpha = 0 is plain round-to-nearest, so the search never does
   worse than it on that sample.
2. With s fixed, each (output channel, group) range is shrunk by the ratio in [0.5, 1]
   minimizing that group's share of the output error (clipping rare outliers buys finer
   steps for the rest).

The division by s goes where it is free: into the preceding RMSNorm's weight for qkv and
gate_up (their inputs are that norm's output), else into the layer's `act_scale`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from builder_service.quantize import fake_quantize_int4

_EPS = 1e-4


@dataclass(frozen=True, slots=True)
class AwqResult:
    """The chosen per-input-channel scale and clip ratios, and the errors they give."""

    scale: torch.Tensor  # [in]: quantize W * scale; divide the input by scale
    clip: torch.Tensor  # [out, G] ratios in [0.5, 1]
    alpha: float
    rtn_error: float  # output MSE of plain round-to-nearest
    error: float  # output MSE after scaling and clipping


def _scale_for(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    s = mean_abs.clamp(min=_EPS).pow(alpha)
    return s / torch.sqrt(s.max() * s.min())


def search_scale(
    w: torch.Tensor, x: torch.Tensor, mean_abs: torch.Tensor, group_size: int, grid: int
) -> tuple[torch.Tensor, float, float, float]:
    """(scale, alpha, error at alpha=0, best error) for weight w [out, in], sample x [n, in]."""
    y_ref = x @ w.T
    best: tuple[float, float, torch.Tensor] | None = None
    rtn_error = float("nan")
    for step in range(grid):
        alpha = step / grid
        s = _scale_for(mean_abs, alpha)
        w_q = fake_quantize_int4(w * s, group_size) / s
        error = float((x @ w_q.T - y_ref).pow(2).mean())
        if step == 0:
            rtn_error = error
        if best is None or error < best[0]:
            best = (error, alpha, s)
    assert best is not None
    return best[2], best[1], rtn_error, best[0]


def search_clip(
    w: torch.Tensor, x: torch.Tensor, group_size: int, grid: int, max_shrink: float = 0.5
) -> torch.Tensor:
    """Clip ratios [out, G] for weight w [out, in] (already scaled) and input x [n, in]
    (already divided by the scale): per group, the ratio minimizing that group's output error.

    The error of group g of output o is mean_n (x_g . dw_og)^2 = dw_og^T C_g dw_og / n with
    C_g = x_g^T x_g, so each ratio costs out * in * group_size instead of n * out * in.
    """
    out, num_in = w.shape
    num_groups = num_in // group_size
    xg = x.reshape(x.shape[0], num_groups, group_size).transpose(0, 1)  # [G, n, gs]
    gram = xg.transpose(1, 2) @ xg / x.shape[0]  # [G, gs, gs]
    wg = w.reshape(out, num_groups, group_size).transpose(0, 1)  # [G, out, gs]
    best_err = torch.full((num_groups, out), float("inf"), device=w.device)
    best_ratio = torch.ones(num_groups, out, device=w.device)
    for step in range(max(1, int(grid * max_shrink))):
        ratio = 1.0 - step / grid
        clip = torch.full((out, num_groups), ratio, device=w.device)
        w_q = fake_quantize_int4(w, group_size, clip)
        dw = w_q.reshape(out, num_groups, group_size).transpose(0, 1) - wg  # [G, out, gs]
        err = ((dw @ gram) * dw).sum(dim=2)  # [G, out]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio.transpose(0, 1).contiguous()


def awq_search(
    w: torch.Tensor, x: torch.Tensor, mean_abs: torch.Tensor, group_size: int, grid: int
) -> AwqResult:
    """Scale search, then clip search, for one linear layer (all tensors float32)."""
    w, x = w.float(), x.float()
    scale, alpha, rtn_error, _ = search_scale(w, x, mean_abs.float(), group_size, grid)
    w_scaled, x_scaled = w * scale, x / scale
    clip = search_clip(w_scaled, x_scaled, group_size, grid)
    w_q = fake_quantize_int4(w_scaled, group_size, clip)
    error = float((x_scaled @ w_q.T - x @ w.T).pow(2).mean())
    return AwqResult(scale, clip, alpha, rtn_error, error)
