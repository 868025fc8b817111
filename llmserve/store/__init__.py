"""The artifact store shared by the builder (publishes engines) and runtimes (load them).

`open_store("/some/dir")` or `open_store("s3://bucket/prefix")` returns a store; see
llmserve.store.base for the rules both backends keep.
"""

from __future__ import annotations

from pathlib import Path

from llmserve.store.adapters import AdapterManifest, adapter_id
from llmserve.store.base import ADAPTERS, ENGINES, ArtifactStore, BuildLock
from llmserve.store.holds import Hold
from llmserve.store.local import LocalStore
from llmserve.store.manifest import (
    ENGINE_FORMAT_VERSION,
    MANIFEST_NAME,
    EngineManifest,
    FileEntry,
    Validation,
    engine_id,
)
from llmserve.store.options import StoreOptions


def open_store(uri: str, options: StoreOptions | None = None) -> ArtifactStore:
    """A local directory store, or an S3 store for an s3:// URI."""
    if uri.startswith("s3://"):
        from llmserve.store.s3 import S3Store

        return S3Store(uri, options)
    return LocalStore(Path(uri), options)


__all__ = [
    "ADAPTERS",
    "ENGINES",
    "ENGINE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "AdapterManifest",
    "ArtifactStore",
    "BuildLock",
    "EngineManifest",
    "FileEntry",
    "Hold",
    "LocalStore",
    "StoreOptions",
    "Validation",
    "adapter_id",
    "engine_id",
    "open_store",
]
