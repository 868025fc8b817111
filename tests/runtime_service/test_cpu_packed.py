"""bfloat16 engines on a CPU keep their linear weights in oneDNN's blocked layout
(models/linear.py `pack_for_cpu`): the logits must be bitwise those of the plain weights,
for a tied LM head (SmolLM2) and an untied one, and the engine must pack what it serves."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from runtime_service.engine.config import EngineConfig
from runtime_service.engine.engine import LLMEngine
from runtime_service.models.linear import Linear, cpu_packing_applies
from runtime_service.models.loader import load_hf_model
from runtime_service.models.scoring import sequence_logits
from tests.runtime_service.test_engine_parity import mixed_prompts

pytestmark = pytest.mark.skipif(
    not cpu_packing_applies(torch.zeros(1, dtype=torch.bfloat16)),
    reason="this CPU's oneDNN has no bfloat16 kernels: nothing is packed",
)


def linears(model: torch.nn.Module) -> list[Linear]:
    return [m for m in model.modules() if isinstance(m, Linear)]


@pytest.mark.parametrize("name", ["llama", "qwen2", "smollm2"])
def test_packed_weights_give_bitwise_the_same_logits(
    name: str, tiny_model_dir: Callable[[str], Path], smollm2_dir: Path
) -> None:
    path = smollm2_dir if name == "smollm2" else tiny_model_dir(name)
    model = load_hf_model(path, torch.bfloat16, torch.device("cpu"), 512)
    prompts = mixed_prompts(path, 3, seed=61, max_len=60)
    with torch.inference_mode():
        plain = [sequence_logits(model, p) for p in prompts]
        one_row = model.embed[prompts[0][:1]]  # a one-token product, as a lone decode
        head = model.compute_logits(one_row)
        assert model.pack_for_cpu(16)
        assert model.pack_for_cpu(16)  # again (a second runner over the model): no change
        assert all(lin.packed for lin in linears(model))
        for p, expected in zip(prompts, plain, strict=True):
            assert torch.equal(sequence_logits(model, p), expected)
        assert torch.equal(model.compute_logits(one_row), head)


def test_a_float32_model_is_left_as_it_is(tiny_model_dir: Callable[[str], Path]) -> None:
    model = load_hf_model(tiny_model_dir("llama"), torch.float32, torch.device("cpu"), 512)
    assert not model.pack_for_cpu(16)
    assert not any(lin.packed for lin in linears(model))


def test_the_bf16_cpu_engine_serves_packed_weights(tiny_model_dir: Callable[[str], Path]) -> None:
    engine = LLMEngine(
        EngineConfig(
            model=tiny_model_dir("qwen2"),
            dtype="bfloat16",
            num_kv_blocks=64,
            max_model_len=256,
            max_num_seqs=8,
        )
    )
    assert all(lin.packed for lin in linears(engine.model))
