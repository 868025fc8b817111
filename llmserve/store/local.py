"""The artifact store in a local (or shared, e.g. NFS) directory.

Layout under the root:

    engines/<id>/manifest.json, files ...   published artifacts (visible)
    .staging/engines/<id>.<random>/         artifacts being written (invisible)
    .trash/<random>/                        artifacts being deleted (invisible)
    .locks/engines/<id>.lock                build locks (fcntl.flock; never deleted)
    .holds/engines/<id>/<holder>            runtime holds; the file's mtime is the heartbeat
    .access/engines/<id>                    last use; the file's mtime

A publish renames the staging directory to engines/<id> in one step; a delete renames it to
.trash first. The kernel drops a flock when its process dies, so a killed builder never
blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from llmserve.store.base import ArtifactStore, BuildLock, Manifest
from llmserve.store.manifest import MANIFEST_NAME
from llmserve.store.options import StoreOptions


class _FileLock(BuildLock):
    def ensure_held(self) -> None:
        """A flock lasts as long as its descriptor: nothing can take it away."""


class LocalStore(ArtifactStore):
    """See the module docstring."""

    def __init__(self, root: Path, options: StoreOptions | None = None) -> None:
        root = root.expanduser().resolve()
        super().__init__(str(root), options or StoreOptions())
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, kind: str, artifact_id: str) -> Path:
        return self.root / kind / artifact_id

    # ---- reading ------------------------------------------------------------------------
    def local_dir(self, kind: str, artifact_id: str) -> Path | None:
        """Published artifacts are never modified in place (a publish or delete renames the
        whole directory), so they can be read where they are."""
        self.check_id(kind, artifact_id)
        return self._dir(kind, artifact_id)

    def _read_manifest(self, kind: str, artifact_id: str) -> Manifest | None:
        try:
            return json.loads((self._dir(kind, artifact_id) / MANIFEST_NAME).read_text())
        except FileNotFoundError:
            return None

    def _list_ids(self, kind: str) -> list[str]:
        base = self.root / kind
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / MANIFEST_NAME).is_file())

    def _download(self, kind: str, artifact_id: str, name: str, dest: Path) -> None:
        src = self._dir(kind, artifact_id) / name
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing")
        shutil.copyfile(src, dest)

    # ---- writing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _staging(self, kind: str, artifact_id: str) -> Iterator[Path]:
        parent = self.root / ".staging" / kind
        parent.mkdir(parents=True, exist_ok=True)
        path = parent / f"{artifact_id}.{uuid.uuid4().hex}"
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _publish(self, kind: str, artifact_id: str, staging: Path, manifest: Manifest) -> None:
        tmp = staging / (MANIFEST_NAME + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.rename(staging / MANIFEST_NAME)
        for p in staging.rglob("*"):
            if p.is_file():
                with p.open("rb") as f:
                    os.fsync(f.fileno())
        final = self._dir(kind, artifact_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(final)
        _fsync_dir(final.parent)

    def _remove(self, kind: str, artifact_id: str) -> None:
        trash = self.root / ".trash"
        trash.mkdir(exist_ok=True)
        doomed = trash / uuid.uuid4().hex
        try:
            self._dir(kind, artifact_id).rename(doomed)
        except FileNotFoundError:
            return
        (self.root / ".access" / kind / artifact_id).unlink(missing_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)

    # ---- locking ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(
        self, kind: str, artifact_id: str, on_wait: Callable[[], None] | None
    ) -> Iterator[BuildLock]:
        path = self.root / ".locks" / kind / f"{artifact_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited and on_wait is not None:
                        on_wait()
                    waited = True
                    time.sleep(self.options.poll_s)
            self._clear_stale_staging(kind, artifact_id)
            yield _FileLock()
        finally:
            os.close(fd)

    def _clear_stale_staging(self, kind: str, artifact_id: str) -> None:
        """Removes staging left by a dead writer of this id (only the lock holder writes)."""
        parent = self.root / ".staging" / kind
        if parent.is_dir():
            for p in parent.glob(f"{artifact_id}.*"):
                shutil.rmtree(p, ignore_errors=True)

    # ---- holds and use ------------------------------------------------------------------
    def _hold_dir(self, kind: str, artifact_id: str) -> Path:
        return self.root / ".holds" / kind / artifact_id

    def _write_hold(self, kind: str, artifact_id: str, holder: str) -> None:
        path = self._hold_dir(kind, artifact_id) / holder
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path)

    def _delete_hold(self, kind: str, artifact_id: str, holder: str) -> None:
        (self._hold_dir(kind, artifact_id) / holder).unlink(missing_ok=True)

    def _live_holders(self, kind: str, artifact_id: str) -> list[str]:
        base = self._hold_dir(kind, artifact_id)
        if not base.is_dir():
            return []
        now, live = time.time(), []
        for p in base.iterdir():
            try:
                age = now - p.stat().st_mtime
            except FileNotFoundError:
                continue
            if age <= self.options.hold_ttl_s:
                live.append(p.name)
            else:
                p.unlink(missing_ok=True)
        return sorted(live)

    def touch(self, kind: str, artifact_id: str) -> None:
        self.check_id(kind, artifact_id)
        path = self.root / ".access" / kind / artifact_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path)

    def _last_used(self, kind: str) -> dict[str, float]:
        base = self.root / ".access" / kind
        if not base.is_dir():
            return {}
        return {p.name: p.stat().st_mtime for p in base.iterdir()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
