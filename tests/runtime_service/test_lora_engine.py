"""Adapters in a serving engine: slot eviction, loading mid-stream, unloading, prefix caching,
loading on first use. Every output is checked against transformers + PEFT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llmserve.errors import FailedPrecondition, NotFound
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.lora import AdapterState
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.lora_reference import lora_engine, make_adapters, peft_greedy
from tests.runtime_service.reference import hf_greedy, run_to_completion
from tests.runtime_service.test_engine_parity import mixed_prompts

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def qwen2_adapters(tiny_model_dir: Callable[[str], Path], tmp_path_factory) -> list[Path]:
    path = tiny_model_dir("qwen2")
    return make_adapters(path, tmp_path_factory.mktemp("qwen2-adapters"), 8)


def expected(path: Path, prompt: list[int], adapter: Path | None, n: int = 16) -> list[int]:
    return hf_greedy(path, prompt, n) if adapter is None else peft_greedy(path, adapter, prompt, n)


def check_slot_invariants(engine: LLMEngine) -> None:
    """Every running request's adapter is in a device slot, and pinned by it."""
    lora = engine.lora
    assert lora is not None
    for req in engine.scheduler.running:
        if req.adapter is not None:
            assert lora.slots.slot_of(req.adapter) is not None, f"{req} lost its slot"
            assert lora.slots.is_pinned(req.adapter)
    assert lora.slots.num_pinned_slots <= lora.slots.num_slots


def test_eight_adapters_through_two_slots(
    tiny_model_dir: Callable[[str], Path], qwen2_adapters: list[Path]
) -> None:
    """Two requests per adapter, plus base-model requests, through two slots and a KV pool
    too small for them all: evictions and preemptions happen, every output is right."""
    path = tiny_model_dir("qwen2")
    prompts = mixed_prompts(path, 20, seed=50, max_len=100)
    chosen: list[Path | None] = [*qwen2_adapters, *qwen2_adapters, None, None, None, None]
    engine = lora_engine(path, max_loras=2, num_kv_blocks=12, max_num_seqs=8, max_model_len=128)
    for adapter in qwen2_adapters:
        engine.load_adapter(adapter.name, adapter)
    for i, (prompt, adapter) in enumerate(zip(prompts, chosen, strict=True)):
        engine.add_request(f"r{i}", prompt, GREEDY, adapter=adapter and adapter.name)
    outputs: dict[str, list[int]] = {}
    while engine.has_unfinished_requests:
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
        check_slot_invariants(engine)
    for i, (prompt, adapter) in enumerate(zip(prompts, chosen, strict=True)):
        assert outputs[f"r{i}"] == expected(path, prompt, adapter), f"r{i}"
    lora = engine.lora
    assert lora is not None
    assert lora.num_evictions >= 6 and lora.num_loads == lora.num_evictions + 2
    assert engine.scheduler.num_preemptions > 0, "the KV pool never ran out"
    infos = engine.list_adapters()
    assert sum(i.state == AdapterState.DEVICE for i in infos) == 2
    assert all(i.num_requests == 0 and i.num_running == 0 for i in infos)


def test_adapter_loaded_while_others_stream(
    tiny_model_dir: Callable[[str], Path], qwen2_adapters: list[Path]
) -> None:
    path = tiny_model_dir("qwen2")
    prompts = mixed_prompts(path, 6, seed=51, max_len=40)
    first, second, late = qwen2_adapters[:3]
    engine = lora_engine(path, max_loras=3)
    engine.load_adapter("first", first)
    engine.load_adapter("second", second)
    long = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    running = [("a", "first", first), ("b", "second", second), ("c", None, None)]
    for rid, name, _ in running:
        engine.add_request(rid, prompts["abc".index(rid)], long, adapter=name)
    outputs: dict[str, list[int]] = {}
    for step in range(40):
        if step == 6:  # everyone is decoding: load an adapter and start a request with it
            assert all(len(outputs.get(rid, [])) > 0 for rid, _, _ in running)
            engine.load_adapter("late", late)
            engine.add_request("d", prompts[3], GREEDY, adapter="late")
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
    outputs_rest = run_to_completion(engine)
    for rid, tokens in outputs_rest.items():
        outputs.setdefault(rid, []).extend(tokens.token_ids)
    for rid, _, adapter in running:
        prompt = prompts["abc".index(rid)]
        assert outputs[rid] == expected(path, prompt, adapter, 30), rid
    assert outputs["d"] == expected(path, prompts[3], late)
    assert engine.lora is not None and engine.lora.num_evictions == 0


def test_unload_fails_while_in_use_or_waits(
    tiny_model_dir: Callable[[str], Path], qwen2_adapters: list[Path]
) -> None:
    path = tiny_model_dir("qwen2")
    prompt = mixed_prompts(path, 1, seed=52, max_len=30)[0]
    engine = lora_engine(path)
    engine.load_adapter("x", qwen2_adapters[0])
    engine.add_request("r1", prompt, GREEDY, adapter="x")
    first = engine.step()
    with pytest.raises(FailedPrecondition, match=r"'x' is in use by 1 request\(s\)"):
        engine.unload_adapter("x")
    assert engine.unload_adapter("x", wait=True) is False
    info = engine.list_adapters()[0]
    assert info.unloading and info.num_requests == 1 and info.state == AdapterState.DEVICE
    with pytest.raises(FailedPrecondition, match="'x' is being unloaded"):
        engine.add_request("r2", prompt, GREEDY, adapter="x")
    with pytest.raises(FailedPrecondition, match="'x' is being unloaded"):
        engine.load_adapter("x", qwen2_adapters[0])
    tokens = [t for out in first for t in out.token_ids]
    tokens += run_to_completion(engine)["r1"].token_ids
    assert tokens == expected(path, prompt, qwen2_adapters[0])
    assert engine.list_adapters() == []  # gone with its last request
    with pytest.raises(NotFound):
        engine.add_request("r3", prompt, GREEDY, adapter="x")
    # Unused: it goes at once.
    engine.load_adapter("y", qwen2_adapters[1])
    assert engine.unload_adapter("y") is True and engine.list_adapters() == []


def test_prefix_cache_keeps_adapters_and_their_versions_apart(
    tiny_model_dir: Callable[[str], Path], qwen2_adapters: list[Path]
) -> None:
    path = tiny_model_dir("qwen2")
    prompt = mixed_prompts(path, 4, seed=53, max_len=120)[0][:70]  # 4 full blocks of 16
    old, new = qwen2_adapters[0], qwen2_adapters[4]  # same spec, other weights

    def run(rid: str, adapter: str | None) -> tuple[list[int], int]:
        engine.add_request(rid, prompt, GREEDY, adapter=adapter)
        out = run_to_completion(engine)[rid]
        return out.token_ids, out.num_cached_tokens

    engine = lora_engine(path)
    engine.load_adapter("x", old)
    assert run("r1", "x") == (expected(path, prompt, old), 0)
    assert run("r2", "x") == (expected(path, prompt, old), 64)  # the same adapter: a hit
    assert run("r3", None) == (expected(path, prompt, None), 0)  # the base model: no hit
    engine.unload_adapter("x")
    engine.load_adapter("x", new)  # same name, other weights: the old KV must not be used
    assert run("r4", "x") == (expected(path, prompt, new), 0)
    assert run("r5", "x") == (expected(path, prompt, new), 64)


def test_loading_on_first_use_from_lora_dir(
    tiny_model_dir: Callable[[str], Path], qwen2_adapters: list[Path]
) -> None:
    path = tiny_model_dir("qwen2")
    prompts = mixed_prompts(path, 2, seed=54, max_len=30)
    engine = lora_engine(path, lora_dir=qwen2_adapters[0].parent)
    assert engine.list_adapters() == []
    engine.add_request("r1", prompts[0], GREEDY, adapter="adapter2")
    engine.add_request("r2", prompts[1], GREEDY, adapter="adapter2")
    assert [i.name for i in engine.list_adapters()] == ["adapter2"]
    outputs = run_to_completion(engine)
    for i, prompt in enumerate(prompts):
        assert outputs[f"r{i + 1}"].token_ids == expected(path, prompt, qwen2_adapters[2])
    with pytest.raises(NotFound, match="'adapter99' is not loaded, nor in lora_dir"):
        engine.add_request("r3", prompts[0], GREEDY, adapter="adapter99")
