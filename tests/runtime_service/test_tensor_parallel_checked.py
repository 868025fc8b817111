"""Tensor-parallel loads check the bytes they load (CPU, gloo, 2 ranks, a tiny engine built
into a local store and served in place): every rank hashes each weight file in the read that
loads it and compares the digest with the manifest the runtime trusted (its own SHA-256
pinned), so a file changed after the runtime resolved the engine fails the start with
DataLoss naming it and both digests, whichever rank reads it, and nothing serves; an intact
engine generates what the single-process engine does."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llmserve.errors import DataLoss
from llmserve.store import open_store
from llmserve.store.engines import ServedEngine, engine_to_serve
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.llm import LLM
from runtime_service.parallel.group import ParallelGroup
from runtime_service.parallel.load import load_shard, open_host_weights
from runtime_service.parallel.workers import Workers
from tests.runtime_service.test_engine_parity import mixed_prompts
from tests.runtime_service.test_engines_from_store import build, run_runtime
from tests.runtime_service.test_tensor_parallel import SETTINGS, split_llm, tokens


def served_in_place(tmp_path: Path, source: Path) -> tuple[str, str, ServedEngine]:
    """(store uri, engine id, what the runtime resolves) of `source` built into a local
    store: its directory in the store, not verified yet, the manifest's digest pinned."""
    store_uri, engine_id = build(tmp_path, source)
    served = engine_to_serve(open_store(store_uri), engine_id, tmp_path / "cache", "cpu")
    assert not served.verified and served.manifest_sha256 is not None
    return store_uri, engine_id, served


def corrupt(served: ServedEngine) -> str:
    """Flips one byte in the middle of the engine's first weight file (its size unchanged);
    what a DataLoss names: 'file NAME is corrupt: sha256 NOW, the manifest says BEFORE'."""
    weights = next(served.path.glob("weights-*.safetensors"))
    data = bytearray(weights.read_bytes())
    want = hashlib.sha256(data).hexdigest()
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    got = hashlib.sha256(data).hexdigest()
    return f"file {weights.name} is corrupt: sha256 {got}, the manifest says {want}"


def checked(served: ServedEngine) -> dict[str, object]:
    """The settings runtime_service/loading.py gives an engine served in place."""
    return dict(verify_engine=True, engine_manifest_sha256=served.manifest_sha256)


def test_an_intact_engine_served_in_place_splits_and_generates_like_one(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tiny_model_dir("qwen2")
    _, _, served = served_in_place(tmp_path, source)
    prompts = mixed_prompts(source, 3, seed=86, max_len=60)
    single = tokens(LLM(str(served.path), **checked(served), **SETTINGS), prompts)
    with split_llm(served.path, **checked(served)) as llm:
        assert tokens(llm, prompts) == single


def test_a_weight_file_changed_after_the_engine_was_resolved_fails_the_split_start(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    _, _, served = served_in_place(tmp_path, tiny_model_dir("llama"))
    named = corrupt(served)  # between the runtime's resolve and the core's load
    with pytest.raises(DataLoss, match=named):
        LLM(str(served.path), tensor_parallel_size=2, **checked(served), **SETTINGS)


def test_a_rank_checks_the_bytes_of_its_load_not_an_earlier_pass(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """The file changes after the rank opened the engine (manifest, small files checked)
    and before it reads the weights: the read that loads them finds it."""
    _, _, served = served_in_place(tmp_path, tiny_model_dir("llama"))
    config = EngineConfig(model=served.path, tensor_parallel_size=2, **checked(served))  # type: ignore[arg-type]
    cpu = torch.device("cpu")
    host = open_host_weights(config, torch.float32, cpu)
    named = corrupt(served)
    with pytest.raises(DataLoss, match=named):
        load_shard(host, ParallelGroup(0, 2, cpu))


def test_a_worker_checks_the_bytes_it_reads_itself(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """Rank 1 alone (rank 0 reads nothing here): its own read finds the changed file, and
    its DataLoss reaches rank 0 as DataLoss, named with the rank."""
    _, engine_id, served = served_in_place(tmp_path, tiny_model_dir("llama"))
    named = corrupt(served)
    config = EngineConfig(model=served.path, tensor_parallel_size=2, **checked(served))  # type: ignore[arg-type]
    workers = Workers()
    try:
        workers.spawn(config, torch.float32, [torch.device("cpu")] * 2)
        with pytest.raises(DataLoss) as failure:
            workers.wait_ready()
    finally:
        workers.close(kill=True)
    assert str(failure.value).startswith(
        f"tensor-parallel rank 1 failed to start: DataLoss: engine {engine_id} at {served.path}:"
    )
    assert named in str(failure.value)


def test_a_runtime_serving_a_changed_engine_in_place_with_two_ranks_never_serves(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    store_uri, engine_id, served = served_in_place(tmp_path, tiny_model_dir("llama"))
    named = corrupt(served)
    out = run_runtime(
        [
            *("--store", store_uri, "--engine", engine_id),
            *("--engine-cache-dir", str(tmp_path / "cache"), "--tensor-parallel-size", "2"),
        ]
    )
    assert out.returncode == 1
    assert named in out.stderr
    assert "runtime serving" not in out.stderr
