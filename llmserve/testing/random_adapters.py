"""Random LoRA adapters in PEFT's file format (adapter_config.json +
adapter_model.safetensors), for a model of any config.json's shapes, written without PEFT
(an 8B-shaped model needs no checkpoint, and machines without PEFT can make them): for the
multi-LoRA benchmark and the GPU tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

MODULES = {  # PEFT module name -> the attribute of the decoder layer that holds it
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def shapes(config: dict) -> dict[str, tuple[int, int]]:
    h, i = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads")
    d = config.get("head_dim") or h // heads
    kv = kv or heads
    return {
        "q_proj": (h, heads * d),
        "k_proj": (h, kv * d),
        "v_proj": (h, kv * d),
        "o_proj": (heads * d, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def write_adapter(
    out: Path, config: dict, rank: int, targets: list[str], seed: int, b_std: float = 0.01
) -> Path:
    """A random PEFT LoRA adapter for a model of `config`'s shapes (bf16; A ~ N(0, 1/in),
    B ~ N(0, b_std^2), alpha = 2 * rank)."""
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for name in targets:
            fan_in, fan_out = shapes(config)[name]
            prefix = f"base_model.model.model.layers.{layer}.{MODULES[name]}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(rank, fan_in, generator=g) / fan_in**0.5
            ).to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(fan_out, rank, generator=g) * b_std
            ).to(torch.bfloat16)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": rank,
                "lora_alpha": 2 * rank,
                "target_modules": targets,
                "bias": "none",
                "lora_dropout": 0.0,
                "fan_in_fan_out": False,
                "use_rslora": False,
                "use_dora": False,
                "task_type": "CAUSAL_LM",
            }
        )
    )
    return out
