"""The runtime's Triton cache: where it is (setting, TRITON_CACHE_DIR, default), and seeding
it from an engine's kernels/triton directory (a fake cache of files: the GPU part, a real
Triton compile, is in bench/gpu/coldstart.sh)."""

from __future__ import annotations

from pathlib import Path

from llmserve.store.manifest import ENGINE_TRITON_CACHE
from runtime_service.config import RuntimeConfig
from runtime_service.kernel_cache import seed_kernel_cache, use_kernel_cache


def test_the_setting_beats_the_environment_which_beats_the_default(tmp_path: Path) -> None:
    engines = tmp_path / "engines"
    environ: dict[str, str] = {}
    assert use_kernel_cache(None, engines, environ) == engines / ".kernels" / "triton"
    assert environ["TRITON_CACHE_DIR"] == str(engines / ".kernels" / "triton")
    assert (engines / ".kernels" / "triton").is_dir()
    environ = {"TRITON_CACHE_DIR": str(tmp_path / "from-env")}
    assert use_kernel_cache(None, engines, environ) == tmp_path / "from-env"
    assert use_kernel_cache(tmp_path / "flag", engines, environ) == tmp_path / "flag"
    assert environ["TRITON_CACHE_DIR"] == str(tmp_path / "flag")


def test_runtime_config_reads_the_flag_and_its_environment_variable(tmp_path: Path) -> None:
    from llmserve.config import parse_config

    flag = parse_config(RuntimeConfig, ["--engine", "e", "--kernel-cache-dir", str(tmp_path)])
    assert flag.kernel_cache_dir == tmp_path
    env = parse_config(RuntimeConfig, ["--engine", "e"], {"LLMSERVE_KERNEL_CACHE_DIR": "~/k"})
    assert env.kernel_cache_dir == Path("~/k").expanduser()
    assert parse_config(RuntimeConfig, ["--engine", "e"], {}).kernel_cache_dir is None


def fake_key(root: Path, key: str, files: dict[str, bytes]) -> None:
    (root / key).mkdir(parents=True)
    for name, data in files.items():
        (root / key / name).write_bytes(data)


def test_seeding_copies_the_keys_the_cache_lacks(tmp_path: Path) -> None:
    engine = tmp_path / "engine"
    seeds = engine / ENGINE_TRITON_CACHE
    fake_key(seeds, "AAAA", {"k.cubin": b"cubin-a", "k.json": b"{}", "__grp__k.json": b"{}"})
    fake_key(seeds, "BBBB", {"k.cubin": b"cubin-b", "k.json": b"{}"})
    cache = tmp_path / "cache"
    fake_key(cache, "BBBB", {"k.cubin": b"compiled here", "k.json": b"{}"})
    assert seed_kernel_cache(engine, cache) == 1
    assert (cache / "AAAA" / "k.cubin").read_bytes() == b"cubin-a"
    assert (cache / "AAAA" / "__grp__k.json").exists()
    assert (cache / "BBBB" / "k.cubin").read_bytes() == b"compiled here"  # kept
    assert sorted(p.name for p in cache.iterdir()) == ["AAAA", "BBBB"]  # no leftovers
    assert seed_kernel_cache(engine, cache) == 0  # a second start: nothing to copy


def test_an_engine_without_kernels_seeds_nothing(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    assert seed_kernel_cache(tmp_path / "engine", tmp_path / "cache") == 0
    assert not (tmp_path / "cache").exists()


def test_a_cache_that_cannot_be_written_is_left_to_compile(tmp_path: Path) -> None:
    engine = tmp_path / "engine"
    fake_key(engine / ENGINE_TRITON_CACHE, "AAAA", {"k.cubin": b"a"})
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert seed_kernel_cache(engine, blocked) == 0  # logged, not raised


def test_readahead_of_weight_files_is_advice_only(tmp_path: Path) -> None:
    from runtime_service.readahead import start_readahead

    weights = tmp_path / "weights-00001-of-00001.safetensors"
    weights.write_bytes(b"w" * 4096)
    thread = start_readahead([weights, tmp_path / "missing.safetensors"])  # missing: ignored
    assert thread is not None
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert start_readahead([]) is None
