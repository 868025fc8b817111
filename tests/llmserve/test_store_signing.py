"""Signed manifests (issue 12, item 15): with a key, what is published is signed and what is
fetched is verified first, so weights changed together with their sha256 in the manifest, or
an unsigned manifest, are refused (DATA_LOSS) before any file is trusted."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from llmserve.errors import DataLoss
from llmserve.store import ENGINES, StoreOptions, open_store
from llmserve.store.signing import SIGNATURE_FIELD, read_key

KEY = "k" * 32
WEIGHTS = b"weights v1"


def publish(root: Path, options: StoreOptions) -> dict[str, Any]:
    def build(staging: Path) -> dict[str, Any]:
        (staging / "model.safetensors").write_bytes(WEIGHTS)
        return {"engine_id": "e1", "model_name": "m"}

    manifest, built = open_store(str(root), options).publish_once(ENGINES, "e1", build)
    assert built
    return manifest


def tamper(root: Path) -> None:
    """Replaces the weights and fixes their size and sha256 in the published manifest, as
    someone with write access to the store (and not the key) could."""
    engine = root / ENGINES / "e1"
    new = b"evil weights"
    (engine / "model.safetensors").write_bytes(new)
    manifest_path = next(p for p in engine.rglob("manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.safetensors"] = {
        "size": len(new),
        "sha256": hashlib.sha256(new).hexdigest(),
    }
    manifest_path.write_text(json.dumps(manifest))


def test_signed_manifest_fetches_and_tampering_is_refused(tmp_path: Path) -> None:
    signed = StoreOptions(signing_key=KEY)
    manifest = publish(tmp_path / "store", signed)
    assert len(manifest[SIGNATURE_FIELD]) == 64
    store = open_store(str(tmp_path / "store"), signed)
    copy = store.fetch(ENGINES, "e1", tmp_path / "cache")
    assert (copy / "model.safetensors").read_bytes() == WEIGHTS
    tamper(tmp_path / "store")
    # Without a key the tampered engine passes its (rewritten) checksums: the issue.
    plain = open_store(str(tmp_path / "store"))
    assert (plain.fetch(ENGINES, "e1", tmp_path / "plain") / "model.safetensors").exists()
    with pytest.raises(DataLoss, match="the manifest's signature is wrong"):
        store.fetch(ENGINES, "e1", tmp_path / "cache2")
    with pytest.raises(DataLoss, match="the manifest's signature is wrong"):
        store.fetch_file(ENGINES, "e1", "model.safetensors", tmp_path / "one")
    other = open_store(str(tmp_path / "store"), dataclasses.replace(signed, signing_key="o" * 32))
    with pytest.raises(DataLoss):
        other.fetch(ENGINES, "e1", tmp_path / "cache3")


def test_unsigned_manifest_is_refused_with_a_key(tmp_path: Path) -> None:
    publish(tmp_path / "store", StoreOptions())
    store = open_store(str(tmp_path / "store"), StoreOptions(signing_key=KEY))
    with pytest.raises(DataLoss, match="the manifest is not signed"):
        store.fetch(ENGINES, "e1", tmp_path / "cache")


def test_short_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("short\n")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        read_key(tmp_path / "key")
    (tmp_path / "key").write_text(KEY + "\n")
    assert read_key(tmp_path / "key") == KEY
