"""LoRA references from transformers + PEFT (not our code): random adapters, greedy outputs."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from runtime_service.engine.config import EngineConfig
from runtime_service.engine.engine import LLMEngine


def make_adapter(
    base: Path,
    out: Path,
    *,
    rank: int = 8,
    alpha: float = 16,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
    std: float = 0.1,
    **config: Any,
) -> Path:
    """A PEFT LoRA adapter for `base` saved in `out`, made by peft's own get_peft_model and
    save_pretrained, with lora_A and lora_B drawn from a seeded normal (B != 0, so it changes
    the model)."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora_config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), **config)
    peft_model = get_peft_model(model, lora_config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * std)
    peft_model.save_pretrained(out)
    return out


# One PeftModel per base checkpoint (its own copy: PEFT rewrites the model it wraps), holding
# every adapter asked for so far under a name derived from its path.
_models: dict[Path, PeftModel] = {}
_names: dict[tuple[Path, Path], str] = {}


def _with_adapter(base: Path, adapter: Path) -> PeftModel:
    name = _names.get((base, adapter))
    if name is None:
        name = "a" + hashlib.sha256(str(adapter).encode()).hexdigest()[:12]
        if base not in _models:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            _models[base] = PeftModel.from_pretrained(model, adapter, adapter_name=name)
        else:
            _models[base].load_adapter(adapter, adapter_name=name)
        _models[base].eval()
        _names[base, adapter] = name
    model = _models[base]
    model.set_adapter(name)
    return model


def peft_greedy(base: Path, adapter: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers + PEFT's greedy continuation of `prompt` with `adapter` (through EOS)."""
    return _peft_greedy(base, adapter, tuple(prompt), max_new_tokens)


@functools.cache
def _peft_greedy(base: Path, adapter: Path, prompt: tuple[int, ...], max_new_tokens: int):
    model = _with_adapter(base, adapter)
    config = model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = None  # through EOS, as ignore_eos does
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
    finally:
        config.eos_token_id = saved
    return out[0, len(prompt) :].tolist()


def lora_engine(path: Path, **settings: Any) -> LLMEngine:
    """A float32 engine with LoRA on (4 slots of rank <= 16 unless told otherwise)."""
    base: dict[str, Any] = dict(
        model=path,
        dtype="float32",
        enable_lora=True,
        max_loras=4,
        max_lora_rank=16,
        max_num_batched_tokens=64,
        num_kv_blocks=128,
        max_model_len=256,
    )
    base.update(settings)
    return LLMEngine(EngineConfig(**base))


# Adapters of different ranks, scalings and target sets; together they cover all seven modules.
ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EVEN_LAYERS = list(range(0, 64, 2))
ADAPTER_SPECS: list[dict[str, Any]] = [
    dict(rank=8, alpha=16, targets=("q_proj", "v_proj")),
    dict(rank=4, alpha=8, targets=ALL_MODULES),
    dict(rank=16, alpha=32, targets=ALL_MODULES[3:], use_rslora=True),
    # Only even layers (layer 0 of the tiny models; absent layers must stay base).
    dict(rank=2, alpha=16, targets=("k_proj", "down_proj"), layers_to_transform=EVEN_LAYERS),
]


def make_adapters(base: Path, root: Path, count: int, std: float = 0.1) -> list[Path]:
    """`count` random adapters for `base` under `root`, cycling through ADAPTER_SPECS with a
    different seed each."""
    paths = []
    for i in range(count):
        path = root / f"adapter{i}"
        if not (path / "adapter_model.safetensors").exists():
            make_adapter(base, path, seed=100 + i, std=std, **ADAPTER_SPECS[i % len(ADAPTER_SPECS)])
        paths.append(path)
    return paths
