"""Multi-LoRA batches: greedy outputs equal transformers + PEFT for every adapter, with four
different adapters and base-model requests sharing one batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.lora_reference import lora_engine, make_adapters, peft_greedy
from tests.runtime_service.reference import hf_greedy, hf_tokenizer
from tests.runtime_service.test_engine_parity import TINY, mixed_prompts

MAX_TOKENS = 16


def run_mixed(
    engine: LLMEngine,
    path: Path,
    prompts: list[list[int]],
    adapters: list[Path | None],
    max_tokens: int = MAX_TOKENS,
) -> dict[str, list[int]]:
    """Runs prompt i with adapters[i] (None: base model), all queued at once; checks each
    against transformers (+ PEFT) and that the batch really mixed every adapter and the base
    model in one step."""
    names = {a: a.name for a in adapters if a is not None}
    for adapter, name in names.items():
        engine.load_adapter(name, adapter)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
        engine.add_request(f"r{i}", prompt, params, adapter=names.get(adapter))
    outputs: dict[str, list[int]] = {}
    widest = 0
    while engine.has_unfinished_requests:
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
        mix = {r.adapter for r in engine.scheduler.running}
        widest = max(widest, len(mix))
    assert widest == len(names) + 1, f"at most {widest} adapters (base included) in one step"
    changed: set[Path] = set()
    for i, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
        base = hf_greedy(path, prompt, max_tokens)
        expected = base if adapter is None else peft_greedy(path, adapter, prompt, max_tokens)
        assert outputs[f"r{i}"] == expected, f"r{i} with {adapter and adapter.name}"
        if expected != base:
            changed.add(adapter)
    assert changed == set(names), "an adapter changed none of its outputs: the test is vacuous"
    assert engine.lora is not None and engine.lora.num_bound_requests == 0
    return outputs


@pytest.mark.parametrize("arch", TINY)
def test_four_adapters_and_base_in_one_batch(
    arch: str, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    path = tiny_model_dir(arch)
    adapters = make_adapters(path, tmp_path, 4)
    prompts = mixed_prompts(path, 12, seed=40 + TINY.index(arch), max_len=60)
    cycle: list[Path | None] = [*adapters, None]
    chosen = [cycle[i % len(cycle)] for i in range(len(prompts))]
    engine = lora_engine(path)
    run_mixed(engine, path, prompts, chosen)
    assert engine.lora is not None and engine.lora.num_loads == 4


def test_smollm2_four_adapters_and_base(smollm2_dir: Path, tmp_path: Path) -> None:
    tok = hf_tokenizer(smollm2_dir)
    questions = [
        "What is the capital of France?",
        "Name three primary colors.",
    ]
    prompts = [
        tok(
            tok.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )["input_ids"]
        for q in questions
    ]
    adapters = make_adapters(smollm2_dir, tmp_path, 4, std=0.03)
    # The same question through each adapter and the base model (the prefix cache must keep
    # them apart), and another question through the base model.
    chosen: list[Path | None] = [*adapters, None, None]
    prompts = [prompts[0]] * 5 + [prompts[1]]
    engine = lora_engine(smollm2_dir, num_kv_blocks=64)
    run_mixed(engine, smollm2_dir, prompts, chosen, max_tokens=10)
