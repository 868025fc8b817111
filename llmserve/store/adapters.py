"""LoRA adapters in the artifact store: their manifest and the operations on them.

An adapter artifact holds the two files of a PEFT LoRA adapter exactly as they were
registered (`adapter_config.json`, `adapter_model.safetensors`), so a fetched copy is a
directory the runtime's adapter reader loads like any other, plus `manifest.json`.

Its id is a hash of the base model's content digest, the adapter's content digest and the
adapter's name: registering the same files under the same name for the same base model
gives the same id (and publishes once); the same files for another base model, or under
another name, are another adapter. The name is in the id because it is in the manifest and
in every answer about the adapter: a caller registering weights as "legal" gets back an
adapter named "legal", never one named after whoever registered the same bytes first (as
with vLLM's `--lora-modules name=path`, where the name is the caller's handle). Adapters are
megabytes, so an alias stored twice costs little.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llmserve.store.base import ADAPTERS, ArtifactStore
from llmserve.store.holds import Hold
from llmserve.store.manifest import ENGINE_ID_LENGTH, MANIFEST_NAME, FileEntry

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)


def adapter_id(base_model_digest: str, adapter_digest: str, name: str) -> str:
    """The id of an adapter (32 hex digits, as engine ids): a hash of the base model's digest,
    the adapter's digest (its two files) and its name."""
    key = {"base_model_digest": base_model_digest, "adapter_digest": adapter_digest, "name": name}
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:ENGINE_ID_LENGTH]


@dataclass(slots=True)
class AdapterManifest:
    """Everything about one stored adapter; `to_json`/`from_json` round-trip it."""

    adapter_id: str
    name: str
    base_model_digest: str  # the engine's model_digest (EngineManifest.model_digest)
    adapter_digest: str  # "sha256:<hex>" over both files, as the runtime's reader computes it
    engine_id: str  # the engine it was first validated against (any engine of the base model)
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: list[str]  # PEFT names in q, k, v, o, gate, up, down order: ["q_proj", ...]
    source: str  # where it was registered from (local path or s3:// URI)
    files: dict[str, FileEntry] = field(default_factory=dict)
    create_time: float = field(default_factory=time.time)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["id"] = self.adapter_id
        out["kind"] = ADAPTERS
        out["size_bytes"] = self.size_bytes
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterManifest:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # id, kind, size_bytes: derived
        files = {name: FileEntry(**entry) for name, entry in data.pop("files").items()}
        return cls(files=files, **data)

    @classmethod
    def read(cls, root: Path) -> AdapterManifest:
        """The manifest of a fetched adapter directory."""
        return cls.from_json(json.loads((root / MANIFEST_NAME).read_text()))


def get_adapter(store: ArtifactStore, adapter_id: str) -> AdapterManifest:
    """The adapter's manifest; NotFound if the store has no adapter of that id."""
    return AdapterManifest.from_json(store.read(ADAPTERS, adapter_id))


def find_adapter(store: ArtifactStore, adapter_id: str) -> AdapterManifest | None:
    data = store.find(ADAPTERS, adapter_id)
    return None if data is None else AdapterManifest.from_json(data)


def list_adapters(store: ArtifactStore, base_model_digest: str = "") -> list[AdapterManifest]:
    """Adapters in the store, newest first, optionally only those of one base model."""
    adapters = [AdapterManifest.from_json(m) for m in store.list(ADAPTERS)]
    if base_model_digest:
        adapters = [a for a in adapters if a.base_model_digest == base_model_digest]
    return adapters


def hold_adapter(store: ArtifactStore, adapter_id: str, holder: str | None = None) -> Hold:
    """A runtime's hold on an adapter (take it before fetching; release it when unloaded)."""
    return store.hold(ADAPTERS, adapter_id, holder)


def fetch_adapter(store: ArtifactStore, adapter_id: str, cache_dir: Path) -> Path:
    """A verified local copy under cache_dir/<adapter_id>: the two PEFT files and manifest.json.

    NotFound if the store has no such adapter; a file failing its checksum raises DataLoss
    naming it.
    """
    return store.fetch(ADAPTERS, adapter_id, cache_dir)
