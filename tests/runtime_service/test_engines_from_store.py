"""Serving built engines: greedy outputs equal the source model's; the runtime daemon loads an
engine by id from the store, and refuses a missing, corrupted or foreign one at start-up."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from builder_service.build import Builder
from builder_service.spec import BuildSpec
from llmserve.device import cpu_info
from llmserve.processes import REPO_ROOT
from llmserve.store import open_store
from llmserve.store.engines import fetch_engine
from llmserve.testing import smollm2
from llmserve.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc
from runtime_service.engine.llm import LLM
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.daemon_harness import generate_request, tokens
from tests.runtime_service.reference import hf_greedy
from tests.runtime_service.test_engine_parity import mixed_prompts

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


def build(tmp: Path, source: Path, **spec: object) -> tuple[str, str]:
    """Builds `source` into a store under tmp; returns (store uri, engine id)."""
    store_uri = str(tmp / "store")
    builder = Builder(open_store(store_uri), tmp / "work", device=cpu_info())
    final = builder.build(BuildSpec(source=str(source), **spec))
    assert final.engine is not None
    return store_uri, final.engine.engine_id


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_unquantized_engine_generates_like_its_source(
    arch: str, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tiny_model_dir(arch)
    store_uri, engine_id = build(tmp_path, source)
    engine_dir = fetch_engine(open_store(store_uri), engine_id, tmp_path / "cache", "cpu")
    prompts = mixed_prompts(source, 16, seed=51, max_len=80)
    llm = LLM(str(engine_dir), num_kv_blocks=128, device="cpu")  # built for the CPU target
    assert llm.engine.core.info.engine_id == engine_id
    for prompt, completion in zip(prompts, llm.generate(prompts, GREEDY), strict=True):
        assert completion.token_ids == hf_greedy(source, prompt, 16)


def test_smollm2_engine_from_the_gguf_generates_like_transformers(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    store_uri, engine_id = build(tmp_path, smollm2.gguf_path())
    engine_dir = fetch_engine(open_store(store_uri), engine_id, tmp_path / "cache", "cpu")
    llm = LLM(str(engine_dir), num_kv_blocks=64, max_model_len=1024, device="cpu")
    tok = llm.engine.tokenizer
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompts = [
        tok(chat, add_special_tokens=False)["input_ids"],
        *mixed_prompts(smollm2_dir, 3, seed=52, max_len=100),
    ]
    completions = llm.generate(prompts, GREEDY)
    for prompt, completion in zip(prompts, completions, strict=True):
        assert completion.token_ids == hf_greedy(smollm2_dir, prompt, 16)
    assert "Paris" in completions[0].text


def test_runtime_serves_an_engine_by_id(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tiny_model_dir("qwen2")
    store_uri, engine_id = build(tmp_path, source, quantization="int8")
    args = [
        "--store",
        store_uri,
        "--engine",
        engine_id,
        "--engine-cache-dir",
        str(tmp_path / "cache"),
    ]
    runtime = _start_by_id(tmp_path, args)
    try:
        with grpc.insecure_channel(runtime.address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            status = stub.GetStatus(runtime_pb2.GetStatusRequest())
            assert status.engine.engine_id == engine_id
            assert status.engine.quantization == common_pb2.QUANTIZATION_INT8_WEIGHT_ONLY
            assert status.engine.validation.engine_perplexity > 0
            chunks = list(stub.Generate(generate_request([5, 6, 7], 8)))
            assert len(tokens(chunks)) == 8
        # While it serves, the runtime holds the engine: the store refuses to delete it.
        from llmserve.errors import FailedPrecondition
        from llmserve.store.engines import delete_engine

        with pytest.raises(FailedPrecondition):
            delete_engine(open_store(store_uri), engine_id)
    finally:
        runtime.terminate()
    assert open_store(store_uri).holders("engines", engine_id) == []  # released on exit
    assert not (tmp_path / "cache" / engine_id).exists()  # served in place, not copied
    if "TRITON_CACHE_DIR" not in os.environ:  # Triton's cache defaults to the runtime's
        assert (tmp_path / "cache" / ".kernels" / "triton").is_dir()


def _start_by_id(tmp: Path, args: list[str]):
    from llmserve.processes import DaemonProcess

    proc = DaemonProcess(
        "runtime_service",
        # --device cpu: build() builds for the CPU target, also on a GPU machine.
        [*args, "--log-format", "text", "--num-kv-blocks", "64", "--device", "cpu"],
        log_path=tmp / "runtime-by-id.log",
    )
    proc.start().wait_serving(timeout=120)
    return proc


def run_runtime(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime_service",
            "--port",
            "0",
            "--log-format",
            "text",
            "--num-kv-blocks",
            "64",
            "--device",
            "cpu",  # the engines are built for the CPU target, also on a GPU machine
            *args,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_corrupted_or_foreign_engines_stop_start_up(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tiny_model_dir("llama")
    store_uri, engine_id = build(tmp_path, source)
    cache = ["--engine-cache-dir", str(tmp_path / "cache")]
    out = run_runtime(["--store", store_uri, "--engine", "0" * 64, *cache])
    assert out.returncode == 1 and f"engine {'0' * 64} is not in the store" in out.stderr

    _, foreign = build(tmp_path, source, target="sm_90")
    out = run_runtime(["--store", store_uri, "--engine", foreign, *cache])
    assert out.returncode == 1 and "sm_90" in out.stderr and "cpu" in out.stderr

    # The local store's engine is served in place: the loader hashes each weight file in the
    # read that loads it, and a corrupted one stops the start, named with both digests.
    weights = next((tmp_path / "store" / "engines" / engine_id).glob("weights-*.safetensors"))
    data = bytearray(weights.read_bytes())
    want = hashlib.sha256(data).hexdigest()
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    got = hashlib.sha256(data).hexdigest()
    out = run_runtime(["--store", store_uri, "--engine", engine_id, *cache])
    assert out.returncode == 1
    assert f"file {weights.name} is corrupt: sha256 {got}, the manifest says {want}" in out.stderr
    assert "runtime serving" not in out.stderr
    assert not (tmp_path / "cache" / engine_id).exists()  # nothing was copied
