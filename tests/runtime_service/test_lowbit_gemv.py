"""The low-bit GEMV kernels against the dense product of the dequantized weight (the CPU path
that the parity tests hold equal to transformers). Without CUDA they run in Triton's
interpreter (tests/conftest.py) in float32 and float16; on a GPU in bfloat16 and with fp8."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runtime_service.kernels.fp8 import quantize_per_token, quantize_per_token_reference
from runtime_service.kernels.lowbit_gemv import MAX_ROWS, lowbit_gemv
from runtime_service.kernels.splitk import workspace
from runtime_service.models.linear import Linear, dequantize_int4, pack_int4, quantize_fp8_rowwise

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPES = [torch.bfloat16, torch.float16] if CUDA else [torch.float32, torch.float16]


def int8_layer(n: int, k: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "weight": torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8),
        "scales": torch.rand(n, generator=g) * 0.01 + 1e-3,
    }


def int4_layer(n: int, k: int, g: torch.Generator, group: int = 128) -> dict[str, torch.Tensor]:
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    return {
        "weight": pack_int4(q),
        "scales": torch.rand(n, k // group, generator=g) * 0.01 + 1e-3,
        "zeros": torch.rand(n, k // group, generator=g) * 15,
    }


def close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Within the rounding of the operands' dtype (the kernel accumulates in float32)."""
    tol = 1e-5 if ours.dtype == torch.float32 else 2e-2
    err = (ours.float() - ref.float()).norm() / ref.float().norm()
    assert err <= tol, err


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["int8", "int4", "int4/64", "int4/32", "int4/16"])
@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS])
def test_weight_only_gemv_matches_dense(kind: str, rows: int, dtype: torch.dtype) -> None:
    """int4/64: groups of 64 over 576 inputs (SmolLM2's width: 9 groups, one per step);
    int4/32: GGUF's Q4 groups."""
    ours, ref = run_gemv(kind, rows, dtype)
    assert ours.shape == ref.shape and ours.dtype == dtype
    close(ours.cpu(), ref)


@pytest.mark.parametrize("rows", [1, 3])  # one row: multiply-adds in registers, no MMA tile
@pytest.mark.parametrize("kind", ["int8"])
def test_split_k_matches_dense_and_resets_its_counters(kind: str, rows: int) -> None:
    """A config that asks for many programs per SM splits the K loop (5 splits of 20 steps
    here); the last program of each tile sums the partials and zeroes the tile's counter, so
    a second call (as a CUDA graph replay would make) gives the same result."""
    config = (16, 128, 4, 3, 64)
    first, ref = run_gemv(kind, rows, torch.float16, config)
    second, _ = run_gemv(kind, rows, torch.float16, config)
    close(first.cpu(), ref)
    assert torch.equal(first, second)
    assert not workspace(DEVICE, 1)[1].any()


def run_gemv(
    kind: str, rows: int, dtype: torch.dtype, config: tuple | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the kernel's product, the dense reference) for a random layer of `kind`."""
    g = torch.Generator().manual_seed(rows)
    n, k = 96, {"int4/64": 576, "int4/32": 256, "int4/16": 256}.get(kind, 2560)
    if kind == "int8":
        layer = int8_layer(n, k, g)
    else:
        layer = int4_layer(n, k, g, int(kind.split("/")[1]) if "/" in kind else 128)
    bias = torch.randn(n, generator=g)
    x = torch.randn(rows, k, generator=g)
    if kind == "int8":
        dense = layer["weight"].float() * layer["scales"][:, None]
    else:
        dense = dequantize_int4(layer["weight"], layer["scales"], layer["zeros"])
    ref = F.linear(x.to(dtype).float(), dense.to(dtype).float(), bias.to(dtype).float())
    on = {key: v.to(DEVICE) for key, v in layer.items()}
    ours = lowbit_gemv(
        x.to(DEVICE, dtype),
        on["weight"],
        on["scales"],
        on.get("zeros"),
        bias=bias.to(DEVICE, dtype),
        config=config,
    )
    return ours, ref


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="fp8 tiles need a GPU")
@pytest.mark.parametrize("config", [None, (16, 128, 4, 3, 64)])  # the second splits K by 4
@pytest.mark.parametrize("rows", [1, 7, MAX_ROWS])
def test_fp8_gemv_matches_scaled_product(rows: int, config: tuple | None) -> None:
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(256, 512, generator=g)
    x = torch.randn(rows, 512, generator=g).to(torch.bfloat16)
    layer = quantize_fp8_rowwise(w)
    q, s = quantize_per_token_reference(x)
    ref = (q.float() * s) @ (layer["weight"].float() * layer["scales"][:, None]).T
    qd, sd = quantize_per_token(x.cuda())
    ours = lowbit_gemv(
        qd, layer["weight"].cuda(), layer["scales"].cuda(), x_scales=sd[:, 0],
        out_dtype=torch.bfloat16, config=config,
    )  # fmt: skip
    close(ours.cpu(), ref)
    # 16-bit x: the kernel quantizes each token itself, with quantize_per_token's arithmetic.
    fused = lowbit_gemv(
        x.cuda(), layer["weight"].cuda(), layer["scales"].cuda(), out_dtype=torch.bfloat16,
        config=config,
    )  # fmt: skip
    assert torch.equal(fused, ours)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="the small-batch path is taken on CUDA")
@pytest.mark.parametrize("kind", ["int8", "int4", "fp8"])
def test_linear_small_and_large_batches_agree(kind: str) -> None:
    """`Linear` takes the kernel for a few tokens and the dense path beyond: same result."""
    g = torch.Generator().manual_seed(0)
    n, k = 128, 512
    if kind == "fp8":
        layer = quantize_fp8_rowwise(torch.randn(n, k, generator=g))
    else:
        layer = (int8_layer if kind == "int8" else int4_layer)(n, k, g)
    linear = Linear(kind, {key: v.cuda() for key, v in layer.items()})
    x = torch.randn(64, k, generator=g).to("cuda", torch.bfloat16)
    close(linear(x[:4]), linear(x)[:4])
    close(linear(x[:1]), linear(x)[:1])  # fp8: one token quantizes inside the kernel
