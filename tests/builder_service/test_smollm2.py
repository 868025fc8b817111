"""SmolLM2-135M-Instruct built from its GGUF for cpu, in every quantization the CPU runs.

The references are transformers reading the same GGUF (llmserve.testing.smollm2). The tests
share one store, so an engine built by one (the daemon of the kill test, say) is reused by
the next, as a real store would; each test still checks its own engine fully.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from builder_service.build import AwqOptions, Builder
from builder_service.calibration import calibration_text
from builder_service.spec import BuildSpec
from llmserve.device import cpu_info
from llmserve.errors import FailedPrecondition
from llmserve.processes import REPO_ROOT, DaemonProcess
from llmserve.store import ENGINES, EngineManifest, open_store
from llmserve.store.adapters import ADAPTER_FILES, AdapterManifest, fetch_adapter
from llmserve.store.engines import fetch_engine, find_engine
from llmserve.testing import smollm2
from llmserve.testing.references import engine_greedy, reference_perplexity, transformers_greedy
from llmserve.v1 import builder_pb2, builder_pb2_grpc, common_pb2
from runtime_service.engine.lora.adapter import AdapterReader
from runtime_service.models.llama import LlamaModel
from runtime_service.models.loader import load_engine, read_hf_config
from runtime_service.models.scoring import sequence_logits

CPU = torch.device("cpu")
GGUF = str(smollm2.gguf_path())
# A lighter int4 search than the daemon's default (grid 20, 256 samples), to keep the suite
# fast on two cores; docs/benchmarks.md has the default's figures.
TEST_AWQ = AwqOptions(grid=10, samples=128)
SHIPPED_ADAPTER = REPO_ROOT / "examples/adapters/smollm2-answer-format"


@dataclass
class Env:
    store_dir: Path
    work_dir: Path
    cache_dir: Path
    builder: Builder

    def build(self, quantization: str, **kwargs: Any) -> EngineManifest:
        spec = BuildSpec(source=GGUF, quantization=quantization, **kwargs)
        engine = self.builder.build(spec).engine
        assert engine is not None
        return engine

    def load(self, engine: EngineManifest) -> LlamaModel:
        return load_engine(fetch_engine(self.builder.store, engine.engine_id, self.cache_dir), CPU)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    tmp = tmp_path_factory.mktemp("smollm2")
    store = open_store(str(tmp / "store"))
    # Keeping the loaded GGUF saves reloading it for each quantization.
    builder = Builder(store, tmp / "work", device=cpu_info(), awq=TEST_AWQ, source_cache_size=1)
    return Env(tmp / "store", tmp / "work", tmp / "cache", builder)


@pytest.fixture(scope="module")
def reference() -> Iterator[tuple[Any, Any]]:
    yield smollm2.load_reference()


def chat_prompt(tokenizer: Any) -> list[int]:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_killed_builder_leaves_nothing_and_the_next_build_succeeds(env: Env) -> None:
    args = ["--store", str(env.store_dir), "--work-dir", str(env.work_dir)]
    request = builder_pb2.BuildRequest(
        source=GGUF, quantization=common_pb2.QUANTIZATION_INT8_WEIGHT_ONLY
    )
    first = DaemonProcess("builder_service", args, log_path=env.work_dir / "b1.log").start()
    try:
        first.wait_serving()
        with grpc.insecure_channel(first.address) as channel:
            stream = builder_pb2_grpc.BuilderStub(channel).Build(request, timeout=300)
            with pytest.raises(grpc.RpcError):
                for event in stream:
                    if event.phase == builder_pb2.BUILD_PHASE_VALIDATING:
                        first.kill()  # SIGKILL, halfway: files written, not yet published
    finally:
        first.kill()
    store = open_store(str(env.store_dir))
    assert store.list(ENGINES) == []
    staged = list((env.store_dir / ".staging" / ENGINES).iterdir())
    assert len(staged) == 1 and any(staged[0].glob("weights-*.safetensors"))

    # The next build (here in this process) takes the lock the dead builder held, clears its
    # leftovers and publishes.
    final = env.builder.build(BuildSpec(source=GGUF, quantization="int8"))
    assert final.engine is not None and not final.cached
    assert [m["id"] for m in store.list(ENGINES)] == [final.engine.engine_id]
    assert list((env.store_dir / ".staging" / ENGINES).iterdir()) == []
    env.load(final.engine)


def test_int8_stays_within_its_bound(env: Env, reference: tuple[Any, Any]) -> None:
    engine = env.build("int8")
    model, tokenizer = reference
    ids = tokenizer(calibration_text())["input_ids"]
    v = engine.validation
    assert v.num_tokens == len(ids) > 1500
    assert v.source_perplexity == pytest.approx(reference_perplexity(model, ids, 512), rel=1e-4)
    assert 0 < v.relative_increase < 0.02 and v.passed and not v.forced
    assert v.max_relative_increase == 0.02
    assert engine.max_model_len == 8192 and engine.architecture == "LlamaForCausalLM"


def test_unquantized_engine_matches_transformers(env: Env, reference: tuple[Any, Any]) -> None:
    engine = env.build("none")
    assert engine.validation.relative_increase == pytest.approx(0, abs=1e-5)
    model = env.load(engine)
    hf, tokenizer = reference
    prompt = chat_prompt(tokenizer)
    with torch.inference_mode():
        expected = hf(input_ids=torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(sequence_logits(model, prompt), expected, rtol=1e-4, atol=1e-3)
    greedy = engine_greedy(model, prompt, 16, eos_ids=(tokenizer.eos_token_id,))
    assert greedy == transformers_greedy(hf, prompt, 16)
    assert "Paris" in tokenizer.decode(greedy)


def test_int4_is_built_and_validated(env: Env, reference: tuple[Any, Any]) -> None:
    engine = env.build("int4", force=True)
    v = engine.validation
    assert v.max_relative_increase == 0.06
    assert v.source_perplexity < v.engine_perplexity < 2 * v.source_perplexity
    assert v.forced == (not v.passed)
    options = engine.build_options
    assert options["int4_group_sizes"] == {"576": 64, "1536": 128}
    assert options["awq_grid"] == TEST_AWQ.grid and options["awq_mean_error_reduction"] > 1.5
    # The quantized engine still predicts like the original on the text it was checked on.
    unquantized = env.load(env.build("none"))
    tokens = reference[1](calibration_text())["input_ids"][:128]
    agree = sequence_logits(env.load(engine), tokens).argmax(-1) == sequence_logits(
        unquantized, tokens
    ).argmax(-1)
    agreement = float(agree.float().mean())
    print(f"int4 top-1 agreement with the unquantized engine: {agreement:.3f}")
    assert agreement > 0.6


def test_engine_in_the_store_is_checked_against_the_callers_bound(env: Env) -> None:
    existing = env.build("int8")
    with pytest.raises(FailedPrecondition, match=r"int8 raised perplexity .* by 0\.\d+%") as err:
        env.build("int8", max_perplexity_increase=0.0)
    assert "above max_perplexity_increase = 0.00%" in str(err.value)
    assert env.build("int8", max_perplexity_increase=0.0, force=True) == existing
    assert find_engine(env.builder.store, existing.engine_id) == existing


def test_shipped_adapter_registers_against_the_unquantized_engine_only(env: Env) -> None:
    """examples/adapters/smollm2-answer-format (rank 8 on q/k/v/o) fits the unquantized
    engine; the int4 engine refuses it (its q/k/v inputs arrive divided by folded scales)."""
    none, int4 = env.build("none"), env.build("int4", force=True)
    args = ["--store", str(env.store_dir), "--work-dir", str(env.work_dir / "adapters")]
    proc = DaemonProcess("builder_service", args, log_path=env.work_dir / "b-lora.log").start()
    try:
        proc.wait_serving()
        with grpc.insecure_channel(proc.address) as channel:
            stub = builder_pb2_grpc.BuilderStub(channel)

            def register(engine_id: str) -> Any:
                request = builder_pb2.RegisterAdapterRequest(
                    name="answer-format", source=str(SHIPPED_ADAPTER), engine_id=engine_id
                )
                return stub.RegisterAdapter(request, timeout=60).adapter

            adapter = register(none.engine_id)
            with pytest.raises(grpc.RpcError) as err:
                register(int4.engine_id)
    finally:
        proc.terminate()
    assert adapter.base_model_digest == none.model_digest
    assert (adapter.name, adapter.rank, adapter.alpha) == ("answer-format", 8, 16.0)
    assert list(adapter.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "this engine's int4 qkv layers" in err.value.details()
    path = fetch_adapter(env.builder.store, adapter.adapter_id, env.cache_dir)
    for name in ADAPTER_FILES:
        assert (path / name).read_bytes() == (SHIPPED_ADAPTER / name).read_bytes()
    engine_dir = fetch_engine(env.builder.store, none.engine_id, env.cache_dir)
    loaded = AdapterReader(read_hf_config(engine_dir), 64, torch.float32).read("a", path)
    assert loaded.digest == AdapterManifest.read(path).adapter_digest
