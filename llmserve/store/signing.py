"""Optional HMAC-SHA256 signatures of artifact manifests.

A manifest lists every file's SHA-256, so whoever can write the store can change weights and
their checksums together. With a signing key (a Kubernetes Secret given to the builder and to
the runtimes, never to the store), the builder adds `signature`: HMAC-SHA256 over the
manifest's canonical JSON without that field, and a runtime with the key refuses to fetch or
load an artifact whose signature is missing or wrong (DATA_LOSS): only a holder of the key can
publish what it serves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from llmserve.errors import DataLoss
from llmserve.reasons import Reason

SIGNATURE_FIELD = "signature"
MIN_KEY_BYTES = 32


def read_key(path: Path) -> str:
    """The signing key in `path` (whitespace stripped); ValueError if shorter than 32 bytes."""
    key = path.read_text(encoding="utf-8").strip()
    if len(key.encode()) < MIN_KEY_BYTES:
        raise ValueError(f"{path}: a manifest signing key must be at least {MIN_KEY_BYTES} bytes")
    return key


def signature(manifest: dict[str, Any], key: str) -> str:
    body = {k: v for k, v in manifest.items() if k != SIGNATURE_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def sign(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    """`manifest` with its signature field set."""
    return {**manifest, SIGNATURE_FIELD: signature(manifest, key)}


def verify(manifest: dict[str, Any], key: str, what: str) -> None:
    """DataLoss naming `what` unless the manifest carries a valid signature under `key`."""
    given = manifest.get(SIGNATURE_FIELD)
    if not isinstance(given, str) or not given:
        raise DataLoss(
            f"{what}: the manifest is not signed, and this service requires signed manifests"
            " (manifest_signing_key_file); rebuild it with a builder that has the key",
            reason=Reason.MANIFEST_UNSIGNED,
        )
    if not hmac.compare_digest(given, signature(manifest, key)):
        raise DataLoss(
            f"{what}: the manifest's signature is wrong (it was changed after it was signed,"
            " or signed with another key)",
            reason=Reason.MANIFEST_SIGNATURE_INVALID,
        )
