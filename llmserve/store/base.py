"""The artifact store: one interface, implemented over a local directory and over S3.

An artifact (an engine, or a LoRA adapter) is a set of files plus a JSON manifest, addressed by
(kind, id). The rules every backend keeps:

- **Atomic publish.** Files are written to a staging place; the artifact becomes visible all
  at once (local: a directory rename; S3: the manifest, written last, is the commit point).
  A writer that dies leaves nothing visible; its leftovers are invisible and are cleared by
  the next writer of the same id.
- **One build per key.** `publish_once` takes a lock shared by every process using the
  store (local: a kernel file lock; S3: a lock object with a renewed lease), looks again,
  and builds only if the artifact is still missing. Waiters get the published artifact.
- **Holds and LRU.** Runtimes hold what they serve (a heartbeat-refreshed record). Deleting
  a held artifact is refused; over the size cap, the least recently used unheld artifacts
  are collected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from llmserve.errors import FailedPrecondition, InvalidArgument, NotFound, shown
from llmserve.reasons import Reason
from llmserve.store.holds import Hold
from llmserve.store.manifest import describe_files
from llmserve.store.options import StoreOptions
from llmserve.store.signing import sign

log = logging.getLogger(__name__)

ENGINES = "engines"
ADAPTERS = "adapters"
KINDS = (ENGINES, ADAPTERS)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Manifest = dict[str, Any]
BuildFn = Callable[[Path], Manifest]


def new_holder_id() -> str:
    """A name for this process's holds: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class BuildLock(ABC):
    """The exclusive right to build one artifact id, held for the duration of a build."""

    @abstractmethod
    def ensure_held(self) -> None:
        """Raises Aborted if the lock was lost (an expired lease taken over by another)."""


class ArtifactStore(ABC):
    """Common operations; backends implement the primitives marked abstract."""

    def __init__(self, uri: str, options: StoreOptions) -> None:
        self.uri = uri
        self.options = options

    # ---- primitives -------------------------------------------------------------------
    @abstractmethod
    def _read_manifest(self, kind: str, artifact_id: str) -> Manifest | None:
        """The published manifest, or None if the artifact is not (fully) published."""

    @abstractmethod
    def _list_ids(self, kind: str) -> list[str]:
        """Ids of the published artifacts of a kind."""

    @abstractmethod
    def _download(self, kind: str, artifact_id: str, name: str, dest: Path) -> None:
        """Copies one file of a published artifact to dest."""

    @abstractmethod
    def _staging(self, kind: str, artifact_id: str) -> contextlib.AbstractContextManager[Path]:
        """An empty local directory to write a new artifact's files into; removed on exit."""

    @abstractmethod
    def _publish(self, kind: str, artifact_id: str, staging: Path, manifest: Manifest) -> None:
        """Makes the staged files and manifest visible at once (caller holds the lock)."""

    @abstractmethod
    def _remove(self, kind: str, artifact_id: str) -> None:
        """Makes the artifact invisible at once, then removes its files."""

    @abstractmethod
    def _lock(
        self, kind: str, artifact_id: str, on_wait: Callable[[], None] | None
    ) -> contextlib.AbstractContextManager[BuildLock]:
        """Blocks until this process holds the build lock of the id."""

    @abstractmethod
    def _write_hold(self, kind: str, artifact_id: str, holder: str) -> None:
        """Creates or refreshes a hold record (its time is the heartbeat)."""

    @abstractmethod
    def _delete_hold(self, kind: str, artifact_id: str, holder: str) -> None: ...

    @abstractmethod
    def _live_holders(self, kind: str, artifact_id: str) -> list[str]:
        """Holders whose heartbeat is younger than hold_ttl_s (dead ones may be dropped)."""

    @abstractmethod
    def touch(self, kind: str, artifact_id: str) -> None:
        """Records a use of the artifact now (for least-recently-used collection)."""

    @abstractmethod
    def _last_used(self, kind: str) -> dict[str, float]:
        """Last recorded use (epoch seconds) of each artifact of a kind that has one."""

    def local_dir(self, kind: str, artifact_id: str) -> Path | None:
        """The directory holding a published artifact's files on this machine, to read them
        in place; None where the store is remote (S3: fetch a copy instead)."""
        return None

    # ---- common operations ------------------------------------------------------------
    @staticmethod
    def check_id(kind: str, artifact_id: str) -> None:
        if kind not in KINDS:
            raise InvalidArgument(
                f"artifact kind must be one of {KINDS}, got {shown(kind)}",
                reason=Reason.INVALID_FIELD,
                field="kind",
            )
        if not _ID.match(artifact_id):
            raise InvalidArgument(
                f"{kind[:-1]}_id must be 1-128 letters, digits, '.', '_' or '-' (not starting "
                f"with a punctuation mark), got {shown(artifact_id)}",
                reason=Reason.INVALID_FIELD,
                field=f"{kind[:-1]}_id",
            )

    def find(self, kind: str, artifact_id: str) -> Manifest | None:
        """The manifest of a published artifact, or None."""
        self.check_id(kind, artifact_id)
        return self._read_manifest(kind, artifact_id)

    def read(self, kind: str, artifact_id: str) -> Manifest:
        """The manifest of a published artifact; NotFound if there is none."""
        manifest = self.find(kind, artifact_id)
        if manifest is None:
            raise NotFound(
                f"{kind[:-1]} {artifact_id} is not in the store {self.uri}",
                reason=Reason.ARTIFACT_NOT_FOUND,
            )
        return manifest

    def list(self, kind: str) -> list[Manifest]:
        """Manifests of every published artifact of a kind, newest first."""
        manifests = [m for i in self._list_ids(kind) if (m := self._read_manifest(kind, i))]
        return sorted(manifests, key=lambda m: m.get("create_time", 0), reverse=True)

    def holders(self, kind: str, artifact_id: str) -> list[str]:
        self.check_id(kind, artifact_id)
        return self._live_holders(kind, artifact_id)

    def delete(self, kind: str, artifact_id: str) -> int:
        """Removes a published artifact; returns the bytes freed.

        NotFound if absent; FailedPrecondition while a runtime holds it.
        """
        manifest = self.read(kind, artifact_id)
        holders = self._live_holders(kind, artifact_id)
        if holders:
            raise FailedPrecondition(
                f"{kind[:-1]} {artifact_id} is held by {len(holders)} runtime(s) "
                f"({', '.join(sorted(holders))}); it can be deleted once none holds it",
                reason=Reason.ARTIFACT_HELD,
            )
        self._remove(kind, artifact_id)
        return int(manifest.get("size_bytes", 0))

    def hold(self, kind: str, artifact_id: str, holder: str | None = None) -> Hold:
        """Registers a hold, refreshed by a background heartbeat until `release()`."""
        self.check_id(kind, artifact_id)
        holder = holder or new_holder_id()
        self.touch(kind, artifact_id)
        return Hold(
            refresh=lambda: self._write_hold(kind, artifact_id, holder),
            drop=lambda: self._delete_hold(kind, artifact_id, holder),
            interval_s=self.options.hold_ttl_s / 3,
            holder=holder,
        )

    def publish_once(
        self,
        kind: str,
        artifact_id: str,
        build: BuildFn,
        on_wait: Callable[[], None] | None = None,
    ) -> tuple[Manifest, bool]:
        """The artifact, building and publishing it unless it exists. Returns (manifest, built).

        `build(staging_dir)` writes the files and returns the manifest without `files`,
        `size_bytes` and `create_time`, which are filled in here from what was staged.
        Concurrent callers with the same id, in any process sharing the store, build once;
        `on_wait` is called once if this caller has to wait for another's build.
        """
        self.check_id(kind, artifact_id)
        existing = self._read_manifest(kind, artifact_id)
        if existing is not None:
            self.touch(kind, artifact_id)
            return existing, False
        with self._lock(kind, artifact_id, on_wait) as lock:
            existing = self._read_manifest(kind, artifact_id)
            if existing is not None:
                self.touch(kind, artifact_id)
                return existing, False
            with self._staging(kind, artifact_id) as staging:
                manifest = dict(build(staging))
                manifest["id"], manifest["kind"] = artifact_id, kind
                files = describe_files(staging)
                manifest["files"] = {
                    n: {"size": f.size, "sha256": f.sha256} for n, f in files.items()
                }
                manifest["size_bytes"] = sum(f.size for f in files.values())
                manifest["create_time"] = time.time()
                if self.options.signing_key:
                    manifest = sign(manifest, self.options.signing_key)
                lock.ensure_held()
                self._publish(kind, artifact_id, staging, manifest)
            self.touch(kind, artifact_id)
        log.info("published %s %s (%d bytes)", kind, artifact_id, manifest["size_bytes"])
        self.collect_garbage(kind, protect={artifact_id})
        return manifest, True

    def total_bytes(self, kind: str) -> int:
        return sum(int(m.get("size_bytes", 0)) for m in self.list(kind))

    def collect_garbage(self, kind: str, protect: Collection[str] = ()) -> list[str]:
        """Deletes least recently used, unheld artifacts until the store fits max_bytes.

        Returns the ids deleted. Artifacts in `protect` and held ones are kept, even if the
        store stays over its cap.
        """
        cap = self.options.max_bytes
        if cap <= 0:
            return []
        manifests = self.list(kind)
        total = sum(int(m.get("size_bytes", 0)) for m in manifests)
        if total <= cap:
            return []
        last_used = self._last_used(kind)

        def used(m: Manifest) -> tuple[float, float]:
            created = float(m.get("create_time", 0))
            return last_used.get(m["id"], created), created

        deleted: list[str] = []
        for m in sorted(manifests, key=used):
            if total <= cap:
                break
            artifact_id = m["id"]
            if artifact_id in protect or self._live_holders(kind, artifact_id):
                continue
            self._remove(kind, artifact_id)
            total -= int(m.get("size_bytes", 0))
            deleted.append(artifact_id)
            log.info("garbage-collected %s %s (store over %d bytes)", kind, artifact_id, cap)
        return deleted

    def fetch(self, kind: str, artifact_id: str, cache_dir: Path) -> Path:
        """A verified local copy of a published artifact under cache_dir/<id>.

        See llmserve.store.fetch for the rules; this only dispatches to it.
        """
        from llmserve.store.fetch import fetch_artifact

        return fetch_artifact(self, kind, artifact_id, cache_dir)

    def fetch_file(self, kind: str, artifact_id: str, name: str, dest: Path) -> Path:
        """One file of a published artifact copied to `dest` and checked against the manifest
        (DataLoss naming it if it is bad): for reading an engine's config.json, say, without
        fetching its weights."""
        from llmserve.store.fetch import fetch_one_file

        return fetch_one_file(self, kind, artifact_id, name, dest)
