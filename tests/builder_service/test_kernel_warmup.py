"""The engine's compiled kernels: packed from a Triton cache into the engine at build time,
listed and checked in its manifest like its config, and seeded into a runtime's cache.

Triton compiles nothing on a CPU, so the packing and seeding run here on a cache directory of
files laid out as Triton lays it out; the warm-up child itself runs for real (a CPU engine,
no kernels to pack). The compile on a GPU is in bench/gpu/coldstart.sh."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from builder_service.build import Builder
from builder_service.kernel_warmup import pack_kernel_cache, should_warm, warm_kernels
from builder_service.spec import BuildSpec
from llmserve.device import cpu_info
from llmserve.errors import DataLoss
from llmserve.store import open_store
from llmserve.store.base import ENGINES
from llmserve.store.engines import engine_to_serve
from llmserve.store.manifest import ENGINE_TRITON_CACHE, MANIFEST_NAME
from runtime_service.kernel_cache import seed_kernel_cache
from runtime_service.models.loader import read_engine_manifest

KEYS = {
    "K1": {
        "_attn.cubin": b"\x7fELF-1",
        "_attn.json": b'{"name": "_attn"}',
        "__grp___attn.json": b"{}",
    },
    "K2": {"_rms.cubin": b"\x7fELF-2", "_rms.json": b'{"name": "_rms"}'},
}


def triton_like_cache(cache: Path) -> None:
    """Keys as Triton writes them, plus what a cache may also hold mid-write."""
    for key, files in KEYS.items():
        (cache / key).mkdir(parents=True)
        for name, data in files.items():
            (cache / key / name).write_bytes(data)
    (cache / "K3").mkdir()  # a key being written: no files yet
    (cache / ".tmp.pid_1_2").mkdir()
    (cache / ".tmp.pid_1_2" / "x.cubin").write_bytes(b"partial")


def test_pack_keeps_complete_keys_only(tmp_path: Path) -> None:
    triton_like_cache(tmp_path / "cache")
    assert pack_kernel_cache(tmp_path / "cache", tmp_path / "dest") == 2
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["K1", "K2"]
    assert (tmp_path / "dest" / "K1" / "_attn.cubin").read_bytes() == b"\x7fELF-1"
    assert pack_kernel_cache(tmp_path / "missing", tmp_path / "dest2") == 0


def test_only_a_gpu_build_for_its_own_target_warms() -> None:
    assert not should_warm("cpu", cpu_info())


@pytest.fixture
def built(tmp_path: Path, tiny_model_dir: Callable[[str], Path]) -> tuple[Builder, str]:
    builder = Builder(open_store(str(tmp_path / "store")), tmp_path / "work", device=cpu_info())
    engine = builder.build(BuildSpec(source=str(tiny_model_dir("llama")))).engine
    assert engine is not None
    return builder, engine.engine_id


def staged_copy(builder: Builder, engine_id: str, staging: Path) -> dict[str, object]:
    """The engine's files as the builder stages them (no manifest yet), and its manifest."""
    local = builder.store.local_dir(ENGINES, engine_id)
    assert local is not None
    shutil.copytree(local, staging)
    manifest = json.loads((staging / MANIFEST_NAME).read_text())
    (staging / MANIFEST_NAME).unlink()
    return manifest


def test_the_warm_up_child_starts_the_staged_engine(
    built: tuple[Builder, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    staging = tmp_path / "staging"
    manifest = staged_copy(*built, staging)
    with caplog.at_level(logging.WARNING):
        assert warm_kernels(staging, manifest, cpu_info()) == 0  # a CPU: nothing compiled
    assert not [r for r in caplog.records if "kernels not compiled" in r.message]
    assert not (staging / MANIFEST_NAME).exists()  # the warm-up's manifest is gone
    assert not (staging / ENGINE_TRITON_CACHE).exists()


def test_packed_kernels_are_published_checked_and_seeded(
    built: tuple[Builder, str], tmp_path: Path
) -> None:
    builder, engine_id = built
    manifest = staged_copy(builder, engine_id, tmp_path / "staging")
    seen: list[bool] = []

    def compile_in(staging: Path, cache: Path, torch_device: str) -> None:
        seen.append((staging / MANIFEST_NAME).is_file())  # the runtime's loader needs it
        triton_like_cache(cache)

    def build(staging: Path) -> dict[str, object]:
        for p in (tmp_path / "staging").iterdir():
            shutil.move(p, staging / p.name)
        assert warm_kernels(staging, manifest, cpu_info(), run=compile_in) == 2
        return manifest

    store = open_store(str(tmp_path / "store2"))
    published, _ = store.publish_once(ENGINES, engine_id, build)
    assert seen == [True]
    assert f"{ENGINE_TRITON_CACHE}/K1/_attn.cubin" in published["files"]
    served = engine_to_serve(store, engine_id, tmp_path / "engines", "cpu")
    path = served.path
    assert seed_kernel_cache(path, tmp_path / "triton") == 2
    assert (tmp_path / "triton" / "K2" / "_rms.cubin").read_bytes() == b"\x7fELF-2"
    # A kernel file is checked before it is seeded, like the engine's config.
    (path / ENGINE_TRITON_CACHE / "K2" / "_rms.cubin").write_bytes(b"\x7fELF-X")
    with pytest.raises(DataLoss, match=r"file kernels/triton/K2/_rms\.cubin is corrupt: sha256"):
        engine_to_serve(store, engine_id, tmp_path / "engines", "cpu")
    # A kernel file changed after the runtime checked it (the store's directory stays
    # writable while served) is caught on the copy: its key is not seeded, the others are.
    fresh = tmp_path / "triton2"
    fresh.mkdir()
    assert seed_kernel_cache(path, fresh, served.files) == 1
    assert [p.name for p in fresh.iterdir()] == ["K1"]  # K2 not seeded, no copy left over
    # So is a manifest changed after it was trusted, at every read in the engine process.
    manifest_file = path / MANIFEST_NAME
    assert read_engine_manifest(path, served.manifest_sha256).engine_id == engine_id
    text = manifest_file.read_text()
    manifest_file.write_text(text.replace("K2/_rms.cubin", "K2/_rms2.cubin"))
    with pytest.raises(DataLoss, match=r"manifest\.json changed after it was verified"):
        read_engine_manifest(path, served.manifest_sha256)


def test_a_failed_warm_up_publishes_the_engine_without_kernels(
    built: tuple[Builder, str], tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    manifest = staged_copy(*built, staging)

    def fails(staging: Path, cache: Path, torch_device: str) -> None:
        triton_like_cache(cache)
        raise OSError("no space left on device")

    assert warm_kernels(staging, manifest, cpu_info(), run=fails) == 0
    assert not (staging / ENGINE_TRITON_CACHE).exists()
    assert not (staging / MANIFEST_NAME).exists()


@pytest.mark.gpu
def test_packed_kernels_cover_a_runtime_start(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """On a GPU: the builder packs the kernels its warm-up compiled, and a start of the
    engine on a cache seeded with them compiles no new kernel (every key Triton asks for is
    one of the engine's)."""
    from builder_service.kernel_warmup import _run_child
    from llmserve.device import device_info

    device = device_info()
    builder = Builder(open_store(str(tmp_path / "store")), tmp_path / "work", device=device)
    engine = builder.build(BuildSpec(source=str(tiny_model_dir("llama")))).engine
    assert engine is not None and engine.target == device.target
    path = engine_to_serve(
        builder.store, engine.engine_id, tmp_path / "engines", device.target
    ).path
    packed = sorted(p.name for p in (path / ENGINE_TRITON_CACHE).iterdir())
    assert packed, "the build compiled no Triton kernel"
    cache = tmp_path / "triton"
    assert seed_kernel_cache(path, cache) == len(packed)
    _run_child(path, cache, device.torch_device)  # the same start, on the seeded cache
    compiled = sorted(p.name for p in cache.iterdir() if p.is_dir() and any(p.iterdir()))
    assert compiled == packed
