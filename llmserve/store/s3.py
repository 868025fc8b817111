"""The artifact store in S3-compatible object storage, through boto3.

Keys under s3://bucket/prefix:

    engines/<id>/files/<name>        an artifact's files
    engines/<id>/manifest.json       written last: the commit point of a publish
    .locks/engines/<id>              build lock object (see s3_lease)
    .holds/engines/<id>/<holder>     runtime holds; Last-Modified is the heartbeat
    .access/engines/<id>             last use; Last-Modified

An artifact is visible once its manifest exists. A publish first clears files left by a
writer that died (only the lock holder writes an id), uploads the files, then the manifest.
A delete removes the manifest first, so the artifact vanishes at once. Ages are measured on
the S3 server's clock, so clients with skewed clocks agree.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from llmserve.errors import InvalidArgument
from llmserve.reasons import Reason
from llmserve.store.base import ArtifactStore, BuildLock, Manifest, new_holder_id
from llmserve.store.manifest import MANIFEST_NAME
from llmserve.store.options import StoreOptions
from llmserve.store.s3_lease import S3Lease, error_code, server_time

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def parse_s3_uri(uri: str, field: str = "store") -> tuple[str, str]:
    """("bucket", "prefix") of s3://bucket/prefix (the prefix without slashes at its ends)."""
    if not uri.startswith("s3://"):
        raise InvalidArgument(
            f"{field} must be an s3://bucket/prefix URI, got {uri!r}",
            reason=Reason.INVALID_FIELD,
            field=field,
        )
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise InvalidArgument(
            f"{field} has no bucket: {uri!r}", reason=Reason.INVALID_FIELD, field=field
        )
    return bucket, prefix.strip("/")


def make_client(options: StoreOptions) -> Any:
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=options.s3_endpoint_url or None,
        region_name=options.s3_region or None,
    )


def s3_client_for(store: ArtifactStore, options: StoreOptions) -> Any:
    """An S3 client for reading s3:// sources: the store's own, or one made from options."""
    return store.client if isinstance(store, S3Store) else make_client(options)


class S3Store(ArtifactStore):
    """See the module docstring."""

    def __init__(self, uri: str, options: StoreOptions | None = None, client: Any = None) -> None:
        super().__init__(uri.rstrip("/"), options or StoreOptions())
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.client = client or make_client(self.options)
        self._owner = new_holder_id()

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _list(self, prefix: str) -> tuple[list[dict[str, Any]], float]:
        """(objects under prefix, the server's time of the first listing page)."""
        objects: list[dict[str, Any]] = []
        now: float | None = None
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            if now is None:
                now = server_time(page)
            objects.extend(page.get("Contents", []))
        return objects, now if now is not None else 0.0

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            if batch:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )

    # ---- reading ------------------------------------------------------------------------
    def _read_manifest(self, kind: str, artifact_id: str) -> Manifest | None:
        try:
            reply = self.client.get_object(
                Bucket=self.bucket, Key=self._key(kind, artifact_id, MANIFEST_NAME)
            )
        except ClientError as e:
            if error_code(e) in _MISSING_CODES:
                return None
            raise
        return json.loads(reply["Body"].read())

    def _list_ids(self, kind: str) -> list[str]:
        base = self._key(kind) + "/"
        objects, _ = self._list(base)
        ids = set()
        for obj in objects:
            rest = obj["Key"][len(base) :]
            artifact_id, _, name = rest.partition("/")
            if name == MANIFEST_NAME:
                ids.add(artifact_id)
        return sorted(ids)

    def _download(self, kind: str, artifact_id: str, name: str, dest: Path) -> None:
        self.client.download_file(
            self.bucket, self._key(kind, artifact_id, "files", name), str(dest)
        )

    # ---- writing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _staging(self, kind: str, artifact_id: str) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix=f"llmserve-{artifact_id}-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _publish(self, kind: str, artifact_id: str, staging: Path, manifest: Manifest) -> None:
        files_prefix = self._key(kind, artifact_id, "files") + "/"
        leftovers, _ = self._list(files_prefix)
        self._delete_keys([o["Key"] for o in leftovers])
        for name in manifest["files"]:
            self.client.upload_file(str(staging / name), self.bucket, files_prefix + name)
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(kind, artifact_id, MANIFEST_NAME),
            Body=json.dumps(manifest, indent=2, sort_keys=True).encode(),
            ContentType="application/json",
            IfNoneMatch="*",
        )

    def _remove(self, kind: str, artifact_id: str) -> None:
        self.client.delete_object(
            Bucket=self.bucket, Key=self._key(kind, artifact_id, MANIFEST_NAME)
        )
        objects, _ = self._list(self._key(kind, artifact_id) + "/")
        self._delete_keys([o["Key"] for o in objects])
        self.client.delete_object(Bucket=self.bucket, Key=self._key(".access", kind, artifact_id))

    # ---- locking ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(
        self, kind: str, artifact_id: str, on_wait: Callable[[], None] | None
    ) -> Iterator[BuildLock]:
        lease = S3Lease(
            self.client,
            self.bucket,
            self._key(".locks", kind, artifact_id),
            self.options.lock_lease_s,
            self._owner,
        )
        waited = False
        while not lease.try_acquire():
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(self.options.poll_s)
        lease.start_heartbeat()
        try:
            yield lease
        finally:
            lease.release()

    # ---- holds and use ------------------------------------------------------------------
    def _write_hold(self, kind: str, artifact_id: str, holder: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(".holds", kind, artifact_id, holder), Body=b""
        )

    def _delete_hold(self, kind: str, artifact_id: str, holder: str) -> None:
        self.client.delete_object(
            Bucket=self.bucket, Key=self._key(".holds", kind, artifact_id, holder)
        )

    def _live_holders(self, kind: str, artifact_id: str) -> list[str]:
        base = self._key(".holds", kind, artifact_id) + "/"
        objects, now = self._list(base)
        live, dead = [], []
        for obj in objects:
            age = now - obj["LastModified"].timestamp()
            (live if age <= self.options.hold_ttl_s else dead).append(obj)
        self._delete_keys([o["Key"] for o in dead])
        return sorted(o["Key"][len(base) :] for o in live)

    def touch(self, kind: str, artifact_id: str) -> None:
        self.check_id(kind, artifact_id)
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(".access", kind, artifact_id), Body=b""
        )

    def _last_used(self, kind: str) -> dict[str, float]:
        base = self._key(".access", kind) + "/"
        objects, _ = self._list(base)
        return {o["Key"][len(base) :]: o["LastModified"].timestamp() for o in objects}
