"""Quantizers and the AWQ search, checked against the runtime's Linear and brute force."""

from __future__ import annotations

import pytest
import torch

from builder_service.awq import awq_search, search_clip, search_scale
from builder_service.quantize import (
    dequantize,
    fake_quantize_int4,
    int4_group_size,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
)
from runtime_service.kernels.fp8 import FP8_MAX, quantize_per_token_reference
from runtime_service.models.linear import Linear


def weights(out: int = 96, num_in: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, num_in, generator=g) * 0.05
    w[3, 7] = 0.9  # an outlier
    return w


@pytest.mark.parametrize(("num_in", "group"), [(256, 128), (1536, 128), (576, 64), (64, 64)])
def test_int4_group_size(num_in: int, group: int) -> None:
    assert int4_group_size(num_in) == group


def test_int8_round_trip_through_the_runtime_linear() -> None:
    w = weights()
    tensors = quantize_int8(w)
    assert tensors["weight"].dtype == torch.int8
    assert tensors["weight"].abs().amax(dim=1).eq(127).all()  # each row uses the full range
    deq = dequantize(tensors, "int8")
    step = w.abs().amax(dim=1) / 127
    assert ((deq - w).abs() <= step[:, None] / 2 + 1e-7).all()
    x = torch.randn(5, w.shape[1])
    torch.testing.assert_close(Linear("int8", tensors)(x), x @ deq.T, rtol=1e-5, atol=1e-5)


def test_fp8_matches_torch_cast_and_runtime_linear() -> None:
    w = weights()
    tensors = quantize_fp8(w)
    scales = w.abs().amax(dim=1) / FP8_MAX
    expected = (w / scales[:, None]).to(torch.float8_e4m3fn)
    assert torch.equal(tensors["weight"].view(torch.uint8), expected.view(torch.uint8))
    deq = dequantize(tensors, "fp8")
    assert ((deq - w).abs() / w.abs().amax(dim=1, keepdim=True)).max() < 2**-4
    x = torch.randn(5, w.shape[1])
    q, x_scales = quantize_per_token_reference(x)  # fp8 engines quantize activations too
    expected = (q.float() * x_scales) @ deq.T
    torch.testing.assert_close(Linear("fp8", tensors)(x), expected, rtol=1e-5, atol=1e-5)


def test_int4_layout_is_what_the_runtime_reads() -> None:
    w = weights()
    tensors = quantize_int4(w, 128)
    assert tensors["weight"].shape == (96, 128) and tensors["weight"].dtype == torch.uint8
    assert tensors["scales"].shape == tensors["zeros"].shape == (96, 2)
    # Independent reading of the layout: low nibble = even channel, high = odd.
    low = (tensors["weight"] & 0x0F).float()
    high = (tensors["weight"] >> 4).float()
    q = torch.stack((low, high), dim=-1).reshape(96, 256)
    group = torch.arange(256) // 128
    reference = (q - tensors["zeros"][:, group]) * tensors["scales"][:, group]
    torch.testing.assert_close(dequantize(tensors, "int4"), reference)
    torch.testing.assert_close(fake_quantize_int4(w, 128), reference)
    # Asymmetric rounding: within half a step everywhere (no clipping here).
    assert ((reference - w).abs() <= tensors["scales"][:, group] / 2 + 1e-6).all()
    x = torch.randn(5, 256)
    torch.testing.assert_close(Linear("int4", tensors)(x), x @ reference.T, rtol=1e-4, atol=1e-5)


def test_scale_search_is_never_worse_than_round_to_nearest() -> None:
    w = weights(num_in=256)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 256, generator=g)
    x[:, :8] *= 20  # salient input channels
    mean_abs = x.abs().mean(dim=0)
    scale, alpha, rtn_error, best_error = search_scale(w, x, mean_abs, 128, grid=20)
    rtn = float((x @ fake_quantize_int4(w, 128).T - x @ w.T).pow(2).mean())
    assert rtn_error == pytest.approx(rtn, rel=1e-5)
    assert best_error <= rtn_error
    assert alpha > 0 and best_error < 0.8 * rtn_error  # salient channels make scaling pay
    assert scale[:8].mean() > scale[8:].mean()


def test_clip_search_picks_each_groups_best_ratio() -> None:
    w = weights(out=8, num_in=256)
    x = torch.randn(32, 256, generator=torch.Generator().manual_seed(2))
    chosen = search_clip(w, x, 128, grid=20)
    ratios = [1.0 - s / 20 for s in range(10)]
    for o in range(8):
        for gi in range(2):
            cols = slice(gi * 128, (gi + 1) * 128)
            errors = []
            for r in ratios:
                clip = torch.full((8, 2), r)
                dw = fake_quantize_int4(w, 128, clip)[o, cols] - w[o, cols]
                errors.append(float((x[:, cols] @ dw).pow(2).mean()))
            picked = min(range(len(ratios)), key=lambda i: abs(ratios[i] - float(chosen[o, gi])))
            assert errors[picked] == pytest.approx(min(errors), rel=1e-5)


def test_awq_search_reduces_output_error() -> None:
    w = weights(num_in=256)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(3))
    x[:, 100:104] *= 30
    result = awq_search(w, x, x.abs().mean(dim=0), 128, grid=20)
    assert result.error < result.rtn_error
    w_eff = fake_quantize_int4(w * result.scale, 128, result.clip) / result.scale
    error = float((x @ w_eff.T - x @ w.T).pow(2).mean())
    assert error == pytest.approx(result.error, rel=1e-4)
