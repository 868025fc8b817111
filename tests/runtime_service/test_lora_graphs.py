"""Decode steps with adapter tokens replayed as CUDA graphs (cuda_graphs.py, lora_tables.py)
give what the same steps give eagerly: greedy tokens equal and log-probabilities within
float32 rounding, with adapters mixed in every batch and adapters moving between slots after
the graphs were captured. (test_lora_parity.py and test_lora_engine.py, run on a GPU, check
the graph path against transformers + PEFT.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llmserve.testing.random_adapters import MODULES, write_adapter
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.lora_reference import lora_engine
from tests.runtime_service.reference import assert_pool_idle, run_to_completion
from tests.runtime_service.test_engine_parity import mixed_prompts

pytestmark = pytest.mark.gpu
PARAMS = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=5)


def generate(
    path: Path,
    adapters: list[Path],
    prompts: list[list[int]],
    graphs: bool,
    max_loras: int,
) -> tuple[dict[str, tuple[list[int], list[list[float]]]], LLMEngine]:
    """Request i with adapter i mod (len(adapters) + 1) (the last: base model), all queued
    at once; each request's tokens and top-5 log-probabilities."""
    engine = lora_engine(
        path, device="cuda", enable_cuda_graphs=graphs, max_loras=max_loras, max_num_seqs=16
    )
    for adapter in adapters:
        engine.load_adapter(adapter.name, adapter)
    cycle = [a.name for a in adapters] + [None]
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, PARAMS, adapter=cycle[i % len(cycle)])
    outputs = run_to_completion(engine)
    assert_pool_idle(engine)
    return {
        rid: (out.token_ids, [[v for _, v in entry.top] for entry in out.logprobs])
        for rid, out in outputs.items()
    }, engine


@pytest.mark.parametrize("max_loras", [4, 2])
def test_graph_steps_with_adapters_equal_eager(
    max_loras: int, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """Four adapters and the base model in one batch (each prompt through all five); with
    two slots, adapters are evicted and written into slots the captured graphs read."""
    path = tiny_model_dir("llama")
    config = json.loads((path / "config.json").read_text())
    targets = [list(MODULES), ["q_proj", "v_proj"], ["o_proj", "down_proj"], ["gate_proj"]]
    adapters = [  # ranks 16, 8, 4, 2: rank columns past an adapter's rank stay zero
        write_adapter(tmp_path / f"a{i}", config, 16 >> i, t, seed=i, b_std=0.5)
        for i, t in enumerate(targets)
    ]
    prompts = [p for p in mixed_prompts(path, 4, seed=61, max_len=60) for _ in range(5)]
    eager, _ = generate(path, adapters, prompts, graphs=False, max_loras=max_loras)
    graphed, engine = generate(path, adapters, prompts, graphs=True, max_loras=max_loras)
    graphs = engine.runner.graphs
    assert graphs is not None and graphs.lora is not None
    assert graphs.num_replays[True] > 0, "no decode step with adapters replayed a graph"
    if max_loras == 2:
        assert engine.lora is not None and engine.lora.num_evictions > 0
    for rid, (tokens, logprobs) in eager.items():
        assert graphed[rid][0] == tokens, rid
        torch.testing.assert_close(
            torch.tensor(graphed[rid][1]), torch.tensor(logprobs), rtol=0, atol=1e-4
        )
    for a in range(len(adapters)):  # not vacuous: every adapter changed some output
        base_of = {i: f"r{i - i % 5 + 4}" for i in range(len(prompts))}
        assert any(eager[f"r{i}"] != eager[base_of[i]] for i in range(a, len(prompts), 5)), (
            f"adapter {a} changed nothing"
        )
