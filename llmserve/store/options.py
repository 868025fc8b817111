"""How to reach and manage an artifact store: limits, leases and S3 connection details."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Settings of a store client, filled from a daemon's or command's config.

    max_bytes: size cap of the store; 0 means none. Above it, the least recently used
        artifacts that no runtime holds are deleted after each publish.
    lock_lease_s: an S3 build lock not renewed for this long is taken over (a builder that
        died mid-build blocks others for at most this long). Local locks are kernel file
        locks and are released when their process dies, whatever this says.
    hold_ttl_s: a runtime's hold not refreshed for this long is dead and no longer protects
        its artifact from garbage collection.
    poll_s: how often a waiting builder looks at a lock again.
    s3_endpoint_url: S3-compatible endpoint (MinIO, moto, ...); empty for boto3's default,
        which honours AWS_ENDPOINT_URL_S3 and the AWS config files.
    s3_region: region name; empty for boto3's default.
    """

    max_bytes: int = 0
    lock_lease_s: float = 60.0
    hold_ttl_s: float = 120.0
    poll_s: float = 0.5
    s3_endpoint_url: str = ""
    s3_region: str = ""
    # HMAC key of manifests (llmserve/store/signing.py): publishes sign, fetches verify.
    signing_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise InvalidArgument(f"store_max_bytes must be >= 0, got {self.max_bytes}")
        if self.lock_lease_s < 1:
            raise InvalidArgument(f"store_lock_lease_s must be >= 1, got {self.lock_lease_s}")
        if self.hold_ttl_s < 1:
            raise InvalidArgument(f"store_hold_ttl_s must be >= 1, got {self.hold_ttl_s}")
        if self.poll_s <= 0:
            raise InvalidArgument(f"poll_s must be > 0, got {self.poll_s}")
