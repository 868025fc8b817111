"""Engine manifests: what an engine is, how it was built, and each of its files' checksum.

The manifest is `manifest.json` at the root of an engine. The store itself reads only the
generic part (`files`, `size_bytes`, `create_time`); the rest describes the engine for the
builder's API and the runtime's loader. An engine's id is a hash of everything that decides
its bytes: model digest, target, quantization, dtype, build options and format version.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from llmserve.errors import DataLoss
from llmserve.reasons import Reason

# Version of the engine file layout (weights names, quantized tensor formats, manifest keys).
ENGINE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENGINE_ID_LENGTH = 32
# Weight files of an engine, at its root: weights-00001-of-00002.safetensors, ...
ENGINE_WEIGHTS_GLOB = "weights-*.safetensors"
# Triton's cache of the engine's kernels, compiled by the builder on a GPU of the engine's
# target (optional): one directory per Triton cache key, as in a TRITON_CACHE_DIR.
ENGINE_TRITON_CACHE = "kernels/triton"
_CHUNK = 4 * 1024 * 1024
PARALLEL_FILES = 8  # files hashed (or fetched) at once


def is_weight_file(name: str) -> bool:
    """A manifest name of one of an engine's weight files (at the engine's root)."""
    return "/" not in name and fnmatch(name, ENGINE_WEIGHTS_GLOB)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def engine_id(
    model_digest: str,
    target: str,
    quantization: str,
    dtype: str,
    build_options: dict[str, Any],
    format_version: int = ENGINE_FORMAT_VERSION,
) -> str:
    """The content-derived id of the engine these inputs produce (32 hex digits)."""
    key = {
        "model_digest": model_digest,
        "target": target,
        "quantization": quantization,
        "dtype": dtype,
        "build_options": build_options,
        "format_version": format_version,
    }
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:ENGINE_ID_LENGTH]


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of an artifact: its size and SHA-256."""

    size: int
    sha256: str


def describe_files(root: Path) -> dict[str, FileEntry]:
    """FileEntry of every file under root (relative POSIX names), except the manifest; the
    files are hashed by up to PARALLEL_FILES threads at once."""
    paths = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_FILES, len(paths)))) as pool:
        digests = list(pool.map(sha256_file, paths))
    return {
        p.relative_to(root).as_posix(): FileEntry(p.stat().st_size, digest)
        for p, digest in zip(paths, digests, strict=True)
    }


def verify_file(path: Path, name: str, entry: FileEntry, what: str) -> None:
    """DataLoss naming the file unless `path` has the size and SHA-256 of `entry`."""
    if not path.is_file():
        raise DataLoss(f"{what}: file {name} is missing", reason=Reason.ARTIFACT_CORRUPT)
    check_size(path.stat().st_size, name, entry, what)
    check_digest(sha256_file(path), name, entry, what)


def check_size(size: int, name: str, entry: FileEntry, what: str) -> None:
    """DataLoss naming the file unless its size is the manifest's."""
    if size != entry.size:
        raise DataLoss(
            f"{what}: file {name} is corrupt: {size} bytes, the manifest says {entry.size}",
            reason=Reason.ARTIFACT_CORRUPT,
        )


def check_digest(actual: str, name: str, entry: FileEntry, what: str) -> None:
    """DataLoss naming the file and both digests unless `actual` is the manifest's SHA-256."""
    if actual != entry.sha256:
        raise DataLoss(
            f"{what}: file {name} is corrupt: sha256 {actual}, the manifest says {entry.sha256}",
            reason=Reason.ARTIFACT_CORRUPT,
        )


def verify_files(root: Path, files: dict[str, FileEntry], what: str) -> None:
    """Checks every file of a manifest under root (DataLoss naming the first bad one, in the
    manifest's order). Files are hashed by several threads at once (hashlib releases the GIL):
    one thread hashes ~2 GB/s, so an 8B engine's 16 GB would take ~8 s alone."""
    each_file(lambda name, entry: verify_file(root / name, name, entry, what), files)


def each_file(fn: Callable[[str, FileEntry], None], files: dict[str, FileEntry]) -> None:
    """fn(name, entry) for every file, by up to PARALLEL_FILES threads; the first error (in
    the files' order) is raised once all are done."""
    if len(files) <= 1:
        for name, entry in files.items():
            fn(name, entry)
        return
    with ThreadPoolExecutor(max_workers=min(PARALLEL_FILES, len(files))) as pool:
        futures = [pool.submit(fn, name, entry) for name, entry in files.items()]
    for future in futures:
        future.result()


@dataclass(slots=True)
class Validation:
    """Perplexity of the source model and of the engine on the calibration text."""

    source_perplexity: float
    engine_perplexity: float
    max_relative_increase: float
    num_tokens: int
    forced: bool = False
    skipped: bool = False  # not measured: an engine of random weights (benchmarks)

    @property
    def relative_increase(self) -> float:
        return (self.engine_perplexity - self.source_perplexity) / self.source_perplexity

    @property
    def passed(self) -> bool:
        return self.relative_increase <= self.max_relative_increase


@dataclass(slots=True)
class EngineManifest:
    """Everything about one engine; `to_json`/`from_json` round-trip it."""

    engine_id: str
    model_name: str
    model_digest: str
    architecture: str
    source: str
    target: str
    quantization: str
    dtype: str
    max_model_len: int
    num_parameters: int
    build_options: dict[str, Any]
    toolchain: dict[str, str]
    tokenizer: dict[str, Any]
    validation: Validation
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = ENGINE_FORMAT_VERSION
    create_time: float = field(default_factory=time.time)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["id"] = self.engine_id
        out["kind"] = "engines"
        out["size_bytes"] = self.size_bytes
        if not self.validation.skipped:  # the manifests of real engines stay as they were
            del out["validation"]["skipped"]
        out["validation"]["passed"] = self.validation.passed
        out["validation"]["relative_increase"] = self.validation.relative_increase
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineManifest:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # id, kind, size_bytes: derived
        validation = dict(data.pop("validation"))
        validation.pop("passed", None)
        validation.pop("relative_increase", None)
        files = {name: FileEntry(**entry) for name, entry in data.pop("files").items()}
        return cls(validation=Validation(**validation), files=files, **data)

    def write(self, root: Path) -> None:
        (root / MANIFEST_NAME).write_text(json.dumps(self.to_json(), indent=2, sort_keys=True))

    @classmethod
    def read(cls, root: Path, sha256: str | None = None) -> EngineManifest:
        """root's manifest. sha256: the digest of the manifest file a caller has trusted (its
        signature checked, runtime_service/loading.py): a file with other bytes, changed
        since, raises DataLoss."""
        raw = (root / MANIFEST_NAME).read_bytes()
        if sha256 is not None and (got := hashlib.sha256(raw).hexdigest()) != sha256:
            raise DataLoss(
                f"{root / MANIFEST_NAME} changed after it was verified: sha256 {got}, "
                f"verified {sha256}",
                reason=Reason.ARTIFACT_CORRUPT,
            )
        return cls.from_json(json.loads(raw))
