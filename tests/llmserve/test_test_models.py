"""The test models: tiny random checkpoints and SmolLM2, all loadable by transformers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llmserve.testing import tiny_models

EXPECTED = {
    "llama": {"model_type": "llama", "num_key_value_heads": 2, "tie_word_embeddings": False},
    "mistral": {"model_type": "mistral", "num_key_value_heads": 1, "sliding_window": 48},
    "qwen2": {"model_type": "qwen2", "num_key_value_heads": 4, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", "num_key_value_heads": 2, "head_dim": 32},
}


@pytest.mark.parametrize("arch", tiny_models.ARCHITECTURES)
def test_tiny_model_loads_and_generates(arch: str, tiny_model_dir: Callable[[str], Path]) -> None:
    path = tiny_model_dir(arch)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in path.iterdir()
    }
    config = AutoConfig.from_pretrained(path)
    for key, value in EXPECTED[arch].items():
        assert getattr(config, key) == value, key
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    text = "The harbor town woke slowly on winter mornings."
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == text
    # Characters outside the training text still round-trip (byte fallback / byte level).
    assert tokenizer.decode(tokenizer("née 日本")["input_ids"], skip_special_tokens=True) == (
        "née 日本"
    )
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 8)


def test_tiny_models_are_deterministic(tmp_path: Path) -> None:
    a = tiny_models.build_tiny_model("qwen3", tmp_path / "a")
    b = tiny_models.build_tiny_model("qwen3", tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((a / "tokenizer.json").read_text()) == json.loads(
        (b / "tokenizer.json").read_text()
    )


def test_smollm2_answers_the_capital_of_france(smollm2_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=30, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
