"""Fetching an artifact into a local cache, verifying every file's SHA-256.

The copy lands in cache_dir/<id>: files are downloaded into a temporary directory beside it,
each checked against the manifest, and the directory is renamed into place with the manifest
inside, so a half-downloaded copy is never mistaken for a complete one. A cached copy whose
manifest matches the store's is verified again and reused; one that fails is replaced. A
file that fails its checksum straight from the store raises DataLoss naming it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from llmserve.errors import DataLoss, NotFound
from llmserve.reasons import Reason
from llmserve.store.manifest import (
    MANIFEST_NAME,
    FileEntry,
    each_file,
    verify_file,
    verify_files,
)
from llmserve.store.signing import verify

if TYPE_CHECKING:
    from llmserve.store.base import ArtifactStore, Manifest

log = logging.getLogger(__name__)


def manifest_files(manifest: Manifest) -> dict[str, FileEntry]:
    return {name: FileEntry(**entry) for name, entry in manifest["files"].items()}


def _cached_copy_ok(path: Path, manifest: Manifest, what: str) -> bool:
    try:
        cached = json.loads((path / MANIFEST_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if cached != manifest:
        return False
    try:
        verify_files(path, manifest_files(manifest), what)
    except DataLoss as e:
        log.warning("discarding the cached copy: %s", e)
        return False
    return True


def read_trusted(store: ArtifactStore, kind: str, artifact_id: str, what: str) -> Manifest:
    """The artifact's manifest, its signature verified when the store has a signing key."""
    manifest = store.read(kind, artifact_id)
    if store.options.signing_key:
        verify(manifest, store.options.signing_key, what)
    return manifest


def fetch_artifact(store: ArtifactStore, kind: str, artifact_id: str, cache_dir: Path) -> Path:
    """cache_dir/<id>, a complete and verified copy of the published artifact."""
    what = f"{kind[:-1]} {artifact_id} from {store.uri}"
    manifest = read_trusted(store, kind, artifact_id, what)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / artifact_id
    if _cached_copy_ok(final, manifest, f"cached {what}"):
        store.touch(kind, artifact_id)
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{artifact_id}.", dir=cache_dir))
    try:
        each_file(
            lambda name, entry: _download_verified(
                store, kind, artifact_id, name, entry, tmp / name, what
            ),
            manifest_files(manifest),
        )
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if final.exists():
            stale = cache_dir / f".stale-{artifact_id}-{tmp.name}"
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store.touch(kind, artifact_id)
    return final


def _download_verified(
    store: ArtifactStore,
    kind: str,
    artifact_id: str,
    name: str,
    entry: FileEntry,
    dest: Path,
    what: str,
) -> None:
    """Downloads one file of an artifact to dest and checks it (DataLoss naming it if bad)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        store._download(kind, artifact_id, name, dest)
    except FileNotFoundError as e:
        raise DataLoss(
            f"{what}: file {name} is missing from the store", reason=Reason.ARTIFACT_CORRUPT
        ) from e
    verify_file(dest, name, entry, what)


def fetch_one_file(
    store: ArtifactStore, kind: str, artifact_id: str, name: str, dest: Path
) -> Path:
    """dest, a verified copy of the file `name` of a published artifact."""
    what = f"{kind[:-1]} {artifact_id} from {store.uri}"
    manifest = read_trusted(store, kind, artifact_id, what)
    entry = manifest_files(manifest).get(name)
    if entry is None:
        raise NotFound(f"{what} has no file {name}", reason=Reason.ARTIFACT_NOT_FOUND)
    _download_verified(store, kind, artifact_id, name, entry, dest, what)
    return dest
