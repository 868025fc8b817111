"""Triton's compiled-kernel cache of a runtime: where it lives, and seeding it from an engine.

Triton compiles every kernel variant on its first use and keeps the result in
TRITON_CACHE_DIR (one directory per cache key: a hash of the kernel's source, its
specialization, the GPU and the Triton version). On an empty cache an 8B engine's first
start spends ~15 s compiling (the KV profiling step and the graph capture); with the cache
~3 s. Two ways keep that out of a start:

- The runtime points TRITON_CACHE_DIR at its kernel cache directory (--kernel-cache-dir;
  default TRITON_CACHE_DIR when set, else <engine cache dir>/.kernels/triton) before its
  engine process starts, which inherits it: on a persistent volume (the Helm chart's
  runtime.kernelCache), a restarted pod or a second pod of the node starts warm.
- An engine the builder built on a GPU of its target carries the cache of its warm-up
  (builder_service/kernel_warmup.py) under kernels/triton/; the runtime copies the keys its
  cache lacks into it before the engine compiles anything, so even a first start on a new
  node compiles nothing. The files are the engine's, checked against its manifest like its
  config. A key Triton does not compute itself (another Triton, another GPU) is never read:
  such a seed costs a copy and the kernels compile as without it.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import MutableMapping
from pathlib import Path

from llmserve.errors import DataLoss
from llmserve.store.manifest import ENGINE_TRITON_CACHE, FileEntry, verify_file

log = logging.getLogger(__name__)

TRITON_ENV = "TRITON_CACHE_DIR"


def kernel_cache_dir(
    configured: Path | None, engine_cache_dir: Path, environ: MutableMapping[str, str]
) -> Path:
    """The runtime's Triton cache: the setting, else TRITON_CACHE_DIR, else one under the
    engine cache (".kernels": no engine id starts with a dot)."""
    if configured is not None:
        return configured
    if environ.get(TRITON_ENV):
        return Path(environ[TRITON_ENV])
    return engine_cache_dir / ".kernels" / "triton"


def use_kernel_cache(
    configured: Path | None,
    engine_cache_dir: Path,
    environ: MutableMapping[str, str] = os.environ,
) -> Path:
    """Creates the runtime's Triton cache directory and sets TRITON_CACHE_DIR to it in
    `environ` (the process's: the engine process, spawned after, inherits it)."""
    path = kernel_cache_dir(configured, engine_cache_dir, environ).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    environ[TRITON_ENV] = str(path)
    return path


def seed_kernel_cache(
    engine_dir: Path, cache_dir: Path, expected: dict[str, FileEntry] | None = None
) -> int:
    """Copies the engine's Triton cache keys that `cache_dir` lacks into it; the number
    copied. Each key lands whole or not at all (copied beside it, then renamed), so a
    Triton compiling at the same time, or another runtime seeding the same directory,
    never sees half a key. Never raises: a seed that cannot be copied is compiled instead.

    expected: the trusted manifest's file entries, for an engine served in place from a
    directory others can write: each copied file is checked against its entry after the
    copy (a key with a changed, unknown or missing file is not seeded, and says so). None:
    the engine is a verified private copy."""
    seeds = engine_dir / ENGINE_TRITON_CACHE
    if not seeds.is_dir():
        return 0
    try:
        copied = sum(_seed_key(key, cache_dir, expected) for key in sorted(seeds.iterdir()))
    except OSError as e:
        log.warning("kernel cache %s not seeded from %s: %s", cache_dir, seeds, e)
        return 0
    log.info("kernel cache %s: %d compiled kernels seeded from the engine", cache_dir, copied)
    return copied


def _seed_key(key: Path, cache_dir: Path, expected: dict[str, FileEntry] | None) -> bool:
    """Copies one cache key's directory into cache_dir unless it is there already (and,
    with `expected`, unless a copied file is not the manifest's)."""
    final = cache_dir / key.name
    if not key.is_dir() or final.exists():
        return False
    tmp = cache_dir / f".seed-{key.name}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(key, tmp)
        if expected is not None and not _copy_is_trusted(tmp, key.name, expected):
            return False
        tmp.rename(final)
        return True
    except OSError:
        if final.exists():  # another seeder (or Triton) put the key there first
            return False
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_is_trusted(copy: Path, key: str, expected: dict[str, FileEntry]) -> bool:
    """Whether every file of a key's copy, and no other, is the manifest's (checked on the
    copy: what Triton will read)."""
    prefix = f"{ENGINE_TRITON_CACHE}/{key}/"
    names = {prefix + p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    listed = {n for n in expected if n.startswith(prefix)}
    try:
        if names != listed:
            raise DataLoss(f"files {sorted(names ^ listed)} are not the manifest's")
        for name in sorted(names):
            verify_file(copy / name.removeprefix(prefix), name, expected[name], "kernel seed")
    except DataLoss as e:
        log.error("kernel cache key %s not seeded: %s", key, e)
        return False
    return True
