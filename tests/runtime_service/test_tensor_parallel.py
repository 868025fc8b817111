"""Tensor parallelism on the CPU (gloo, 2 processes): greedy tokens equal the single-process
engine's and transformers' for every tiny architecture (GQA, MQA's replicated KV head, MHA
with biases, qk-norm), SmolLM2 (3 KV heads over 2 ranks: uneven whole groups), int8 / int4
engines from the builder, an fp8 engine (CPU emulation), and LoRA adapters (transformers +
PEFT); and a start-up failure names the rank and its cause."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from llmserve.errors import FailedPrecondition, NotFound, Unavailable
from llmserve.store import open_store
from llmserve.store.engines import fetch_engine
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.llm import LLM
from runtime_service.engine.params import SamplingParams
from runtime_service.parallel.workers import Workers
from tests.runtime_service.lora_reference import lora_engine, make_adapters, peft_greedy
from tests.runtime_service.reference import hf_greedy
from tests.runtime_service.test_engine_parity import TINY, mixed_prompts
from tests.runtime_service.test_engines_from_store import build

MAX_TOKENS = 8
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
SETTINGS: dict = dict(
    device="cpu",
    num_kv_blocks=64,
    max_model_len=256,
    max_num_batched_tokens=32,  # prompts over 32 tokens take chunked prefill steps
)


@contextmanager
def split_llm(path: Path, **settings: object) -> Iterator[LLM]:
    llm = LLM(str(path), tensor_parallel_size=2, **{**SETTINGS, **settings})
    try:
        assert llm.engine.core.workers is not None
        yield llm
    finally:
        llm.engine.core.close()


def tokens(llm: LLM, prompts: list[list[int]], params: SamplingParams = GREEDY) -> list[list[int]]:
    return [c.token_ids for c in llm.generate(prompts, params)]


@pytest.mark.parametrize("arch", TINY)
def test_tiny_model_split_over_two_ranks_generates_like_one_and_like_transformers(
    arch: str, tiny_model_dir: Callable[[str], Path]
) -> None:
    path = tiny_model_dir(arch)
    prompts = mixed_prompts(path, 3, seed=81, max_len=60)
    single = tokens(LLM(str(path), dtype="float32", **SETTINGS), prompts)
    with split_llm(path, dtype="float32") as llm:
        split = tokens(llm, prompts)
    assert split == single
    assert split == [hf_greedy(path, p, MAX_TOKENS) for p in prompts]


def test_smollm2_three_kv_heads_over_two_ranks_generates_like_transformers(
    smollm2_dir: Path,
) -> None:
    prompts = mixed_prompts(smollm2_dir, 2, seed=82, max_len=40)
    with split_llm(smollm2_dir, dtype="float32") as llm:
        plans = [llm.engine.model.plan]
        assert plans[0].q_heads == (0, 6) and plans[0].kv_heads == (0, 2)  # rank 0: 2 groups
        assert tokens(llm, prompts) == [hf_greedy(smollm2_dir, p, MAX_TOKENS) for p in prompts]


@pytest.mark.parametrize(("arch", "quantization"), [("qwen2", "int8"), ("llama", "int4")])
def test_quantized_engine_split_over_two_ranks_generates_like_one(
    arch: str, quantization: str, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """int8 scales follow their rows; int4 groups follow their columns (the tiny models' o
    layer is one 64-wide group, cut in two)."""
    source = tiny_model_dir(arch)
    store_uri, engine_id = build(tmp_path, source, quantization=quantization)
    engine_dir = fetch_engine(open_store(store_uri), engine_id, tmp_path / "cache", "cpu")
    prompts = mixed_prompts(source, 3, seed=83, max_len=60)
    single = tokens(LLM(str(engine_dir), **SETTINGS), prompts)
    with split_llm(engine_dir) as llm:
        assert llm.engine.core.info.quantization == quantization
        assert tokens(llm, prompts) == single


def test_fp8_engine_split_over_two_ranks_generates_like_one(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    """fp8 (random weights of the tiny llama's shapes, as the CPU emulation runs them): the
    row-parallel layers quantize each token's activations with the whole row's scale, so the
    logits agree to rounding, not just the tokens."""
    path = tiny_model_dir("llama")
    prompts = mixed_prompts(path, 3, seed=84, max_len=60)
    fp8 = dict(dtype="float32", load_format="dummy", dummy_quantization="fp8")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=3)
    single = LLM(str(path), **fp8, **SETTINGS).generate(prompts, params)
    with split_llm(path, **fp8) as llm:
        split = llm.generate(prompts, params)
    for a, b in zip(single, split, strict=True):
        assert a.token_ids == b.token_ids
        for x, y in zip(a.logprobs, b.logprobs, strict=True):
            assert [t for t, _ in x.top] == [t for t, _ in y.top]
            torch.testing.assert_close([p for _, p in x.top], [p for _, p in y.top])


def test_lora_adapters_split_over_two_ranks_generate_like_peft(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """Two adapters (q/v only; all seven modules, o and down included) and the base model
    in one batch."""
    path = tiny_model_dir("llama")
    adapters = make_adapters(path, tmp_path, 2)
    prompts = mixed_prompts(path, 3, seed=85, max_len=40)
    chosen = [adapters[0], adapters[1], None]
    engine = lora_engine(path, tensor_parallel_size=2, device="cpu")
    try:
        for adapter in adapters:
            engine.load_adapter(adapter.name, adapter)
        for i, (prompt, adapter) in enumerate(zip(prompts, chosen, strict=True)):
            engine.add_request(f"r{i}", prompt, GREEDY, adapter=adapter and adapter.name)
        outputs: dict[str, list[int]] = {}
        while engine.has_unfinished_requests:
            for out in engine.step():
                outputs.setdefault(out.request_id, []).extend(out.token_ids)
    finally:
        engine.core.close()
    for i, (prompt, adapter) in enumerate(zip(prompts, chosen, strict=True)):
        expected = (
            hf_greedy(path, prompt, MAX_TOKENS)
            if adapter is None
            else peft_greedy(path, adapter, prompt, MAX_TOKENS)
        )
        assert outputs[f"r{i}"] == expected, f"r{i} with {adapter and adapter.name}"


def test_a_worker_that_cannot_start_is_named_with_its_cause(tmp_path: Path) -> None:
    workers = Workers()
    missing = tmp_path / "missing"
    try:
        workers.spawn(EngineConfig(model=missing), torch.float32, [torch.device("cpu")] * 2)
        with pytest.raises(NotFound) as failure:  # the worker's error keeps its class
            workers.wait_ready()
    finally:
        workers.close(kill=True)
    assert str(failure.value) == (
        f"tensor-parallel rank 1 failed to start: NotFound: model directory {missing} does not"
        " exist"
    )


class ExitsWhenUnpickled:
    """Stands in for a worker's EngineConfig: the worker dies with status 3 reading its spec."""

    def __reduce__(self) -> tuple:
        return (os._exit, (3,))


def test_a_worker_that_dies_before_it_is_ready_is_named_with_its_status() -> None:
    workers = Workers()
    try:
        workers.spawn(ExitsWhenUnpickled(), torch.float32, [torch.device("cpu")] * 2)  # type: ignore[arg-type]
        with pytest.raises(Unavailable, match="tensor-parallel rank 1 exited with status 3 before"):
            workers.wait_ready()
    finally:
        workers.close(kill=True)


def test_a_split_the_model_cannot_take_is_refused_before_any_worker_starts(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    with pytest.raises(FailedPrecondition, match=r"tensor_parallel_size \(8\) must be <= the"):
        LLM(str(tiny_model_dir("qwen2")), **{**SETTINGS, "tensor_parallel_size": 8})
