"""The model layer against transformers: configs, rope schedules, logits, quantized linears."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from llmserve.errors import FailedPrecondition
from runtime_service.models.config import ModelConfig
from runtime_service.models.linear import Linear, dequantize_int4, pack_int4, unpack_int4
from runtime_service.models.loader import load_hf_model
from runtime_service.models.rope import inverse_frequencies
from runtime_service.models.scoring import sequence_logits
from tests.runtime_service.reference import hf_model

ROPE_CASES = [
    {"rope_type": "linear", "factor": 2.0},
    {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "beta_fast": 16,
    },
]


@pytest.mark.parametrize("rope", ROPE_CASES, ids=lambda r: r["rope_type"])
def test_rope_schedules_match_transformers(rope: dict) -> None:
    hf = LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=256,
        rope_parameters={"rope_theta": 10000.0, **rope},
    )
    expected, expected_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf, "cpu")
    ours, scale = inverse_frequencies(
        ModelConfig.from_hf({**hf.to_dict(), "architectures": ["LlamaForCausalLM"]})
    )
    torch.testing.assert_close(ours, expected.float())
    assert scale == pytest.approx(expected_scale)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_logits_match_transformers(arch: str, tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir(arch)
    ids = torch.randint(3, 1000, (150,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        expected = hf_model(path)(torch.tensor([ids])).logits[0].float()
    ours = sequence_logits(load_hf_model(path, torch.float32, torch.device("cpu")), ids)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)


def test_smollm2_logits_match_transformers(smollm2_dir: Path) -> None:
    ids = torch.randint(3, 49000, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        expected = hf_model(smollm2_dir)(torch.tensor([ids])).logits[0].float()
    ours = sequence_logits(load_hf_model(smollm2_dir, torch.float32, torch.device("cpu")), ids)
    torch.testing.assert_close(ours, expected, atol=5e-4, rtol=1e-4)


def test_unsupported_configs_are_refused(tiny_model_dir: Callable[[str], Path]) -> None:
    config = json.loads((tiny_model_dir("llama") / "config.json").read_text())
    with pytest.raises(FailedPrecondition, match="architecture 'GPT2LMHeadModel'"):
        ModelConfig.from_hf({**config, "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(FailedPrecondition, match="rope_type 'longrope'"):
        ModelConfig.from_hf({**config, "rope_parameters": {"rope_type": "longrope"}})


def test_quantized_linear_formats() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 256, generator=g)
    x = torch.randn(3, 256, generator=g)
    bias = torch.randn(8, generator=g)
    # int8: per output channel.
    scales8 = w.abs().amax(1) / 127
    q8 = torch.round(w / scales8[:, None]).to(torch.int8)
    layer = Linear("int8", {"weight": q8, "scales": scales8, "bias": bias})
    expected = x @ (q8.float() * scales8[:, None]).T + bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    # int4: packing round-trips and the dequantization follows the documented formula.
    q4 = torch.randint(0, 16, (8, 256), generator=g, dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(q4)), q4)
    assert pack_int4(q4)[0, 0] == q4[0, 0] | (q4[0, 1] << 4)
    scales4 = torch.rand(8, 2, generator=g) + 0.1
    zeros4 = torch.rand(8, 2, generator=g) * 15
    w4 = (q4.float() - zeros4.repeat_interleave(128, 1)) * scales4.repeat_interleave(128, 1)
    torch.testing.assert_close(dequantize_int4(pack_int4(q4), scales4, zeros4), w4)
    act = torch.rand(256, generator=g) + 0.5
    layer = Linear(
        "int4", {"weight": pack_int4(q4), "scales": scales4, "zeros": zeros4, "act_scale": act}
    )
    torch.testing.assert_close(layer(x), (x * act) @ w4.T, atol=1e-4, rtol=1e-4)
    # fp8: per output channel; the activations are quantized per token too (fp8 compute).
    scales_f8 = w.abs().amax(1) / 448
    f8 = (w / scales_f8[:, None]).to(torch.float8_e4m3fn)
    layer = Linear("fp8", {"weight": f8, "scales": scales_f8})
    x_scales = x.abs().amax(-1, keepdim=True) / 448
    x8 = (x / x_scales).to(torch.float8_e4m3fn).float() * x_scales
    torch.testing.assert_close(
        layer(x), x8 @ (f8.float() * scales_f8[:, None]).T, atol=1e-4, rtol=1e-4
    )
