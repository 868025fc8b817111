"""The fused decoder-layer kernels against the eager torch ops they replace.

Without CUDA the kernels run in Triton's interpreter (tests/conftest.py), in float32 and
float16; on a GPU in bfloat16 too. The eager ops are the models' own CPU path, which the
parity tests hold equal to transformers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

fused_ops = pytest.importorskip("runtime_service.kernels.fused_ops")

from runtime_service.models.attention import write_kv  # noqa: E402
from runtime_service.models.config import ModelConfig  # noqa: E402
from runtime_service.models.llama import RMSNorm  # noqa: E402
from runtime_service.models.rope import RotaryEmbedding  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])


def exact_or_one_ulp(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Within rounding of the eager ops: float32 to its rounding, half precision to two
    units in the last place of the largest value (the compiled kernel may keep a product in
    float32 where the eager op rounded it, and a difference of products cancels)."""
    if ours.dtype == torch.float32:
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
        return
    ulp = torch.finfo(ours.dtype).eps
    diff = (ours.float() - ref.float()).abs()
    assert diff.max() <= 2 * ulp * max(ref.float().abs().max().item(), 1.0), diff.max()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm(dtype: torch.dtype, with_residual: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 96, generator=g).to(DEVICE, dtype)
    residual = torch.randn(7, 96, generator=g).to(DEVICE, dtype) if with_residual else None
    weight = (1 + 0.1 * torch.randn(96, generator=g)).to(DEVICE, dtype)
    norm = RMSNorm(weight, 1e-5)
    ours, ours_res = fused_ops.add_rms_norm(x, weight, 1e-5, residual)
    summed = x if residual is None else x + residual
    exact_or_one_ulp(ours, norm(summed))
    assert torch.equal(ours_res, summed)


def rope_config(head_dim: int) -> ModelConfig:
    return ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=100,
        hidden_size=4 * head_dim,
        intermediate_size=32,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=head_dim,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling={},
        tie_word_embeddings=True,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_write_kv(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    num_tokens, num_q, num_kv, head_dim = 5, 4, 2, 16
    rope = RotaryEmbedding(rope_config(head_dim), 64, DEVICE)
    qkv = torch.randn(num_tokens, (num_q + 2 * num_kv) * head_dim, generator=g).to(DEVICE, dtype)
    q, k, v = qkv.split([num_q * head_dim, num_kv * head_dim, num_kv * head_dim], dim=-1)
    q, k, v = (t.view(num_tokens, -1, head_dim) for t in (q, k, v))
    positions = torch.tensor([0, 3, 9, 17, 63], device=DEVICE)
    slots = torch.tensor([5, 0, 11, 2, 7], device=DEVICE)
    ref_cache = torch.zeros(2, 3, 4, num_kv, head_dim, dtype=dtype, device=DEVICE)
    ref_q, ref_k = rope(positions, q, k)
    write_kv(ref_cache, ref_k, v, slots)
    cache = torch.zeros_like(ref_cache)
    q_work = q.clone()
    fused_ops.rope_write_kv(q_work, k, v, positions, rope.cos, rope.sin, cache, slots)
    exact_or_one_ulp(q_work, ref_q)
    exact_or_one_ulp(cache, ref_cache)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    gate_up = (torch.randn(6, 2 * 1500, generator=g) * 3).to(DEVICE, dtype)
    gate, up = gate_up.split(1500, dim=-1)
    exact_or_one_ulp(fused_ops.silu_mul(gate_up), F.silu(gate) * up)


@pytest.mark.gpu  # Triton's interpreter has no fp8 type
def test_fp8_activation_quantization_kernel() -> None:
    from runtime_service.kernels import fp8

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 2500, generator=g) * 5).to(DEVICE, torch.bfloat16)
    x[2] = 0  # an all-zero token keeps a finite scale
    q, scales = fp8.quantize_per_token(x)
    ref_q, ref_scales = fp8.quantize_per_token_reference(x)
    torch.testing.assert_close(scales, ref_scales)
    assert (q.float() != ref_q.float()).float().mean() < 0.001  # division rounding, rarely
