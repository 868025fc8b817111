"""A build lock in S3: one lock object, taken with conditional writes, kept by a lease.

- Take: PUT with `If-None-Match: *` succeeds for exactly one of several contenders.
- Keep: the holder rewrites the object with `If-Match: <its ETag>` every lease/3 seconds.
- Expire: an object whose Last-Modified is older than the lease, by the S3 server's own
  clock (the `Date` of the same response), belongs to a dead holder. It is taken over with
  `If-Match: <the stale ETag>`, so of several waiters only one wins.
- Release: DELETE with `If-Match: <its ETag>`, which cannot remove a successor's lock.

A holder that fails to renew (its lease was taken over) marks itself lost; the store checks
before publishing and aborts the build.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from typing import Any

from botocore.exceptions import ClientError

from llmserve.errors import Aborted
from llmserve.reasons import Reason
from llmserve.store.base import BuildLock

log = logging.getLogger(__name__)

_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def server_time(response: dict[str, Any]) -> float:
    """The S3 server's clock (epoch seconds) from a response's Date header."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    date = headers.get("date")
    return parsedate_to_datetime(date).timestamp() if date else time.time()


class S3Lease(BuildLock):
    """One lock object `key` in `bucket`; see the module docstring."""

    def __init__(self, client: Any, bucket: str, key: str, lease_s: float, owner: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._lease_s = lease_s
        self._owner = owner
        self._etag: str | None = None
        self._beats = 0
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        self._beats += 1
        # A nonce makes every write's ETag differ from every earlier one.
        return json.dumps(
            {"owner": self._owner, "beat": self._beats, "nonce": uuid.uuid4().hex}
        ).encode()

    def try_acquire(self) -> bool:
        """Takes the lock if it is free or expired; False if someone else holds it."""
        try:
            reply = self._client.put_object(
                Bucket=self._bucket, Key=self._key, Body=self._body(), IfNoneMatch="*"
            )
            self._etag = reply["ETag"]
            return True
        except ClientError as e:
            if error_code(e) not in _CONFLICT_CODES:
                raise
        try:
            head = self._client.head_object(Bucket=self._bucket, Key=self._key)
        except ClientError as e:
            if error_code(e) in _MISSING_CODES:
                return False  # released in between: try again on the next poll
            raise
        age = server_time(head) - head["LastModified"].timestamp()
        if age <= self._lease_s:
            return False
        try:
            reply = self._client.put_object(
                Bucket=self._bucket, Key=self._key, Body=self._body(), IfMatch=head["ETag"]
            )
        except ClientError as e:
            if error_code(e) in _CONFLICT_CODES | _MISSING_CODES:
                return False
            raise
        log.warning("took over the expired build lock %s (%.0fs without renewal)", self._key, age)
        self._etag = reply["ETag"]
        return True

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self._key}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                reply = self._client.put_object(
                    Bucket=self._bucket, Key=self._key, Body=self._body(), IfMatch=self._etag
                )
                self._etag = reply["ETag"]
            except ClientError as e:
                if error_code(e) in _CONFLICT_CODES | _MISSING_CODES:
                    log.error("lost the build lock %s: %s", self._key, e)
                    self._lost.set()
                    return
                log.warning("could not renew the build lock %s: %s", self._key, e)
            except Exception as e:  # network trouble: try again on the next beat
                log.warning("could not renew the build lock %s: %s", self._key, e)

    def ensure_held(self) -> None:
        if self._lost.is_set():
            raise Aborted(
                f"the build lock {self._key} expired and was taken over by another builder; "
                "the build was not published",
                reason=Reason.BUILD_LOCK_LOST,
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._lost.is_set() or self._etag is None:
            return
        try:
            self._client.delete_object(Bucket=self._bucket, Key=self._key, IfMatch=self._etag)
        except ClientError as e:
            if error_code(e) not in _CONFLICT_CODES | _MISSING_CODES:
                log.warning("could not release the build lock %s: %s", self._key, e)
