"""Engines of random weights built through the builder from a config-only source: a real
engine in the store (files, manifest, id) whose validation says skipped, with the same tensors
as the runtime's `--load-format dummy`, that the runtime daemon loads by id and serves."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import torch

from builder_service.build import Builder
from builder_service.engine_files import write_weight_items
from builder_service.random_weights import num_parameters
from builder_service.spec import BuildSpec
from llmserve.errors import FailedPrecondition
from llmserve.processes import DaemonProcess
from llmserve.store.engines import fetch_engine
from llmserve.v1 import runtime_pb2, runtime_pb2_grpc
from runtime_service.models.config import ModelConfig
from runtime_service.models.loader import load_engine
from runtime_service.models.open import dummy_weights
from tests.runtime_service.daemon_harness import generate_request, tokens


def config_only(source: Path, out: Path) -> Path:
    """The checkpoint's config.json and tokenizer, without its weights."""
    out.mkdir()
    for p in source.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors"):
            shutil.copy(p, out / p.name)
    return out


def test_random_engine_holds_the_dummy_weights_and_says_validation_was_skipped(
    builder: Builder, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    source = config_only(tiny_model_dir("qwen2"), tmp_path / "shape")
    with pytest.raises(FailedPrecondition, match=r"no \*\.safetensors"):
        builder.build(BuildSpec(source=str(source)))  # real weights are needed without it
    final = builder.build(BuildSpec(source=str(source), random_weights=True))
    engine = final.engine
    assert engine is not None and not final.cached
    assert engine.validation.skipped and not engine.validation.passed
    assert math.isnan(engine.validation.engine_perplexity)
    assert engine.build_options["random_weights"] == {"seed": 0}
    config = ModelConfig.from_hf(json.loads((source / "config.json").read_text()))
    weights = _tensors(sorted(tiny_model_dir("qwen2").glob("*.safetensors")))
    hf = sum(t.numel() for t in weights.values())
    assert engine.num_parameters == num_parameters(config) == hf
    engine_dir = fetch_engine(builder.store, engine.engine_id, tmp_path / "cache", "cpu")
    expected = dummy_weights(config, torch.float32, torch.device("cpu"))
    files = _tensors(sorted(engine_dir.glob("weights-*.safetensors")))
    assert files.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(files[name], tensor), name
    load_engine(engine_dir, torch.device("cpu"))  # the runtime's loader takes it
    # Built again: found in the store, the skipped validation is no refusal.
    again = builder.build(BuildSpec(source=str(source), random_weights=True))
    assert again.cached and again.engine is not None
    assert again.engine.engine_id == engine.engine_id
    # Not the engine of the real weights: random_weights is part of the id.
    real = builder.build(BuildSpec(source=str(tiny_model_dir("qwen2"))))
    assert real.engine is not None and real.engine.engine_id != engine.engine_id


def _tensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for p in paths for k, v in load_file(p).items()}


def test_random_int8_engine_serves_from_the_runtime_daemon(
    builder: Builder, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    source = config_only(tiny_model_dir("llama"), tmp_path / "shape")
    final = builder.build(BuildSpec(source=str(source), quantization="int8", random_weights=True))
    assert final.engine is not None and final.engine.validation.skipped
    args = ["--store", str(tmp_path / "store"), "--engine", final.engine.engine_id]
    args += ["--engine-cache-dir", str(tmp_path / "cache"), "--log-format", "text"]
    args += ["--num-kv-blocks", "64", "--device", "cpu"]
    runtime = DaemonProcess("runtime_service", args, log_path=tmp_path / "runtime.log")
    runtime.start().wait_serving(timeout=120)
    try:
        with grpc.insecure_channel(runtime.address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            status = stub.GetStatus(runtime_pb2.GetStatusRequest())
            assert status.engine.engine_id == final.engine.engine_id
            assert not status.engine.validation.passed
            assert len(tokens(list(stub.Generate(generate_request([5, 6, 7], 8))))) == 8
    finally:
        runtime.terminate()
    log = (tmp_path / "runtime.log").read_text()
    assert "engine weights loaded:" in log and "warm-up generation in" in log


def test_weights_written_as_they_come_in_shards(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(10 + i, 7, generator=g) for i in range(6)}
    names = write_weight_items(iter(tensors.items()), tmp_path, max_bytes=700)
    assert len(names) > 2 and names[0] == f"weights-00001-of-{len(names):05d}.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no partial files left
    read = _tensors([tmp_path / n for n in names])
    assert read.keys() == tensors.keys()
    assert all(torch.equal(read[k], tensors[k]) for k in tensors)
