"""Engine-level operations over an artifact store, with EngineManifest in and out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from llmserve.errors import DataLoss
from llmserve.reasons import Reason
from llmserve.store.base import ENGINES, ArtifactStore
from llmserve.store.fetch import manifest_files, read_trusted
from llmserve.store.holds import Hold
from llmserve.store.manifest import (
    MANIFEST_NAME,
    EngineManifest,
    FileEntry,
    is_weight_file,
    verify_files,
)
from llmserve.targets import require_engine_target


def get_engine(store: ArtifactStore, engine_id: str) -> EngineManifest:
    """The engine's manifest; NotFound if the store has no engine of that id."""
    return EngineManifest.from_json(store.read(ENGINES, engine_id))


def find_engine(store: ArtifactStore, engine_id: str) -> EngineManifest | None:
    data = store.find(ENGINES, engine_id)
    return None if data is None else EngineManifest.from_json(data)


def list_engines(
    store: ArtifactStore, model_name: str = "", target: str = ""
) -> list[EngineManifest]:
    """Engines in the store, newest first, optionally only of one model name or target."""
    engines = [EngineManifest.from_json(m) for m in store.list(ENGINES)]
    return [
        e
        for e in engines
        if (not model_name or e.model_name == model_name) and (not target or e.target == target)
    ]


def delete_engine(store: ArtifactStore, engine_id: str) -> int:
    """Removes an engine; returns bytes freed. FailedPrecondition while a runtime holds it."""
    return store.delete(ENGINES, engine_id)


def hold_engine(store: ArtifactStore, engine_id: str, holder: str | None = None) -> Hold:
    """A runtime's hold on an engine (take it before fetching; release it when done)."""
    return store.hold(ENGINES, engine_id, holder)


def fetch_engine(
    store: ArtifactStore, engine_id: str, cache_dir: Path, device_target: str | None = None
) -> Path:
    """A verified local copy of the engine under cache_dir/<engine_id>.

    With `device_target`, an engine built for another target is refused first
    (FailedPrecondition naming both). A file failing its checksum raises DataLoss naming it.
    """
    if device_target is not None:
        manifest = get_engine(store, engine_id)
        require_engine_target(engine_id, manifest.target, device_target)
    return store.fetch(ENGINES, engine_id, cache_dir)


class ServedEngine(NamedTuple):
    """Where a runtime serves an engine from, and what it trusted there."""

    path: Path
    verified: bool  # every file checked already (a private copy)
    # In place: the SHA-256 of the manifest file whose content was trusted (signature
    # checked), which every later read of it must match, and that manifest's file entries
    # (what the kernel seeds copied out of the store are checked against). None: a copy.
    manifest_sha256: str | None = None
    files: dict[str, FileEntry] | None = None


def engine_to_serve(
    store: ArtifactStore, engine_id: str, cache_dir: Path, device_target: str | None = None
) -> ServedEngine:
    """The directory a runtime serves the engine from, whether its weight files are
    verified already, and (in place) what the runtime trusted of it.

    A local store's engine is served in place, nothing copied: its manifest is read (its
    signature checked when the store has a key) and its small files (config, tokenizer) are
    checked now; its weight files are left to the loader, which hashes each in the same read
    that loads it (runtime_service/models/checked_read.py): (the store's directory, False).
    A remote store's engine is fetched into cache_dir/<engine_id>, every file checked on the
    way: (the copy, True). An engine for another target is refused first, as by fetch_engine.
    """
    if device_target is not None:
        manifest = get_engine(store, engine_id)
        require_engine_target(engine_id, manifest.target, device_target)
    local = store.local_dir(ENGINES, engine_id)
    if local is None:
        return ServedEngine(store.fetch(ENGINES, engine_id, cache_dir), True)
    what = f"engine {engine_id} from {store.uri}"
    manifest = read_trusted(store, ENGINES, engine_id, what)
    # The bytes whose content was trusted, for the engine process to check its own reads
    # against (the store's directory stays writable by others while it is served).
    raw = (local / MANIFEST_NAME).read_bytes()
    if json.loads(raw) != manifest:
        raise DataLoss(
            f"{what}: its manifest changed while it was read", reason=Reason.ARTIFACT_CORRUPT
        )
    files = manifest_files(manifest)
    verify_files(local, {n: e for n, e in files.items() if not is_weight_file(n)}, what)
    store.touch(ENGINES, engine_id)
    return ServedEngine(local, False, hashlib.sha256(raw).hexdigest(), files)
