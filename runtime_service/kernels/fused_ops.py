"""Fused elementwise kernels of the decoder layer (Triton, CUDA): one launch where plain torch
takes five to twelve.

- add_rms_norm: (x + residual) -> (RMSNorm of it, the new residual)
- rope_write_kv: rotary embedding of q (in place) and k, and the K/V cache write, per token
- silu_mul: SiLU(gate) * up from the fused gate_up output

Each rounds where the torch reference (models/llama.py, models/rope.py, transformers) rounds:
the residual sum, the normalized value and the weight product, each rotary product and sum,
SiLU and the product are each cast to the activation dtype. Half-precision results stay
within one unit in the last place of the eager ops (the compiler may keep a rounded
intermediate in float32; tests/runtime_service/test_fused_ops.py holds that bound).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    n,
    eps,
    stride_x,
    stride_r,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(res_out_ptr + row * n + cols, x, mask=mask)
    h = x.to(tl.float32)
    var = tl.sum(h * h, axis=0) / n
    normed = (h * tl.rsqrt(var + eps)).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = (w.to(tl.float32) * normed.to(tl.float32)).to(x.dtype)
    tl.store(out_ptr + row * n + cols, y, mask=mask)


def add_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight * rmsnorm(x + residual), x + residual) for x [T, n]; without a residual the
    second is x itself."""
    num_rows, n = x.shape
    out = torch.empty((num_rows, n), dtype=x.dtype, device=x.device)
    res_out = out if residual is None else torch.empty_like(out)
    if num_rows:
        _add_rms_norm_kernel[(num_rows,)](
            x,
            x if residual is None else residual,
            weight,
            out,
            res_out,
            n,
            eps,
            x.stride(0),
            x.stride(0) if residual is None else residual.stride(0),
            HAS_RESIDUAL=residual is not None,
            BLOCK=triton.next_power_of_2(n),
        )
    return out, (x if residual is None else res_out)


@triton.jit
def _rope_write_kv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_qt,
    stride_kt,
    stride_vt,
    stride_cos,
    stride_slot,
    NUM_Q: tl.constexpr,
    NUM_KV: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HALF_PAD: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t)
    d = tl.arange(0, HALF_PAD)
    d_ok = d < HALF
    heads = tl.arange(0, HEADS_PAD)
    # cos/sin tables repeat their first half (cat(freqs, freqs)); cast as the reference does.
    dtype = q_ptr.dtype.element_ty
    c = tl.load(cos_ptr + pos * stride_cos + d, mask=d_ok, other=0.0).to(dtype).to(tl.float32)
    s = tl.load(sin_ptr + pos * stride_cos + d, mask=d_ok, other=0.0).to(dtype).to(tl.float32)
    c, s = c[None, :], s[None, :]

    q_ok = (heads < NUM_Q)[:, None] & d_ok[None, :]
    q_at = q_ptr + t * stride_qt + heads[:, None] * HEAD_DIM + d[None, :]
    q1 = tl.load(q_at, mask=q_ok, other=0.0).to(tl.float32)
    q2 = tl.load(q_at + HALF, mask=q_ok, other=0.0).to(tl.float32)
    a, b = (q1 * c).to(dtype).to(tl.float32), (q2 * s).to(dtype).to(tl.float32)
    tl.store(q_at, (a - b).to(dtype), mask=q_ok)
    a, b = (q2 * c).to(dtype).to(tl.float32), (q1 * s).to(dtype).to(tl.float32)
    tl.store(q_at + HALF, (a + b).to(dtype), mask=q_ok)

    slot = tl.load(slot_ptr + t)
    kv_ok = (heads < NUM_KV)[:, None] & d_ok[None, :]
    k_at = k_ptr + t * stride_kt + heads[:, None] * HEAD_DIM + d[None, :]
    k1 = tl.load(k_at, mask=kv_ok, other=0.0).to(tl.float32)
    k2 = tl.load(k_at + HALF, mask=kv_ok, other=0.0).to(tl.float32)
    cache_at = slot * stride_slot + heads[:, None] * HEAD_DIM + d[None, :]
    cache_dtype = k_cache_ptr.dtype.element_ty
    a, b = (k1 * c).to(dtype).to(tl.float32), (k2 * s).to(dtype).to(tl.float32)
    tl.store(k_cache_ptr + cache_at, (a - b).to(dtype).to(cache_dtype), mask=kv_ok)
    a, b = (k2 * c).to(dtype).to(tl.float32), (k1 * s).to(dtype).to(tl.float32)
    tl.store(k_cache_ptr + cache_at + HALF, (a + b).to(dtype).to(cache_dtype), mask=kv_ok)
    v_at = v_ptr + t * stride_vt + heads[:, None] * HEAD_DIM + d[None, :]
    v1 = tl.load(v_at, mask=kv_ok, other=0.0)
    v2 = tl.load(v_at + HALF, mask=kv_ok, other=0.0)
    tl.store(v_cache_ptr + cache_at, v1.to(cache_dtype), mask=kv_ok)
    tl.store(v_cache_ptr + cache_at + HALF, v2.to(cache_dtype), mask=kv_ok)


def rope_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Rotates q [T, nq, d] in place; writes rotated k and v [T, nkv, d] to their slots of
    kv_cache [2, blocks, block_size, nkv, d]. Rows of q/k/v may be strided (views of qkv)."""
    num_tokens, num_q, head_dim = q.shape
    num_kv = k.shape[1]
    if not num_tokens:
        return
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    half = head_dim // 2
    _rope_write_kv_kernel[(num_tokens,)](
        q,
        k,
        v,
        positions,
        cos,
        sin,
        k_cache,
        v_cache,
        slot_mapping,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        cos.stride(0),
        k_cache.stride(1),
        NUM_Q=num_q,
        NUM_KV=num_kv,
        HEAD_DIM=head_dim,
        HALF=half,
        HEADS_PAD=triton.next_power_of_2(num_q),
        HALF_PAD=triton.next_power_of_2(half),
    )


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, n, stride_gu, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0)
    u = tl.load(gu_ptr + row * stride_gu + n + cols, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    silu = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)
    tl.store(
        out_ptr + row * n + cols, (silu.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=mask
    )


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up for gate_up [T, 2n] (gate first) -> [T, n]."""
    num_rows, two_n = gate_up.shape
    n = two_n // 2
    out = torch.empty((num_rows, n), dtype=gate_up.dtype, device=gate_up.device)
    if num_rows:
        block = 1024
        _silu_mul_kernel[(num_rows, triton.cdiv(n, block))](
            gate_up, out, n, gate_up.stride(0), BLOCK=block
        )
    return out
