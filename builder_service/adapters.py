"""Registering a LoRA adapter: validated against a base engine, then published into the store.

1. *Fields*: the name as runtimes accept it (letters, digits, '.', '_', '-'; at most 64),
   a source and an engine id; the engine must be in the store (NotFound naming it).
2. *Copy*: the adapter's two PEFT files are copied from the local directory, or downloaded
   from the s3:// prefix, into the builder's work directory, so the bytes validated are the
   bytes stored.
3. *Validate* with the runtime's own reader (runtime_service/engine/lora/adapter.py) against
   the engine's config.json, fetched alone and checksum-verified: rank up to the builder's
   `max_lora_rank` (InvalidArgument), PEFT features the engine implements (InvalidArgument),
   modules, layers and shapes of the base model (FailedPrecondition). On an int4 engine the
   builder folded the activation scales of qkv and gate_up into the norms before them, so
   LoRA on q/k/v/gate/up is refused there (FailedPrecondition), as the runtime refuses it.
4. *Publish* once under adapter_id(base model digest, adapter digest, name)
   (llmserve/store/adapters.py says why the name is part of it): registering the same files
   under the same name for the same base model again returns the stored adapter.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from builder_service.convert import INT4_FOLDED_LAYERS
from llmserve.errors import FailedPrecondition, InvalidArgument, NotFound
from llmserve.paths import check_path
from llmserve.reasons import Reason
from llmserve.store import ADAPTERS, ENGINES, ArtifactStore
from llmserve.store.adapters import ADAPTER_FILES, AdapterManifest, adapter_id
from llmserve.store.engines import get_engine
from runtime_service.engine.lora.adapter import AdapterReader
from runtime_service.engine.lora.peft_config import check_adapter_name
from runtime_service.models.config import ModelConfig
from runtime_service.models.loader import read_hf_config

log = logging.getLogger(__name__)

DEFAULT_MAX_LORA_RANK = 64
_WHAT = "a directory or s3:// URI holding adapter_config.json and adapter_model.safetensors"


def prescaled_layers(quantization: str) -> tuple[str, ...]:
    """Fused layers LoRA cannot target on an engine of this quantization: int4 engines take
    the inputs of qkv and gate_up pre-divided by activation scales (convert.py folds them
    into the norms), which the engine does not keep."""
    return INT4_FOLDED_LAYERS if quantization == "int4" else ()


def copy_adapter_files(source: str, dest: Path, s3_client: Any = None) -> None:
    """Copies adapter_config.json and adapter_model.safetensors of `source` into dest.

    NotFound naming `source` when it or one of the files is missing; InvalidArgument when it
    is not a directory or an s3:// URI.
    """
    check_path("source", source)
    dest.mkdir(parents=True, exist_ok=True)
    if source.startswith("s3://"):
        _download_s3(source, dest, s3_client)
        return
    if "://" in source:
        raise InvalidArgument(
            f"source must be {_WHAT}, got {source!r}", reason=Reason.INVALID_FIELD, field="source"
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise NotFound(f"source {source!r} does not exist", reason=Reason.SOURCE_NOT_FOUND)
    if not path.is_dir():
        raise InvalidArgument(
            f"source must be {_WHAT}, got the file {source!r}",
            reason=Reason.INVALID_FIELD,
            field="source",
        )
    for name in ADAPTER_FILES:
        if not (path / name).is_file():
            raise NotFound(f"source {source!r} has no {name}", reason=Reason.SOURCE_NOT_FOUND)
        shutil.copyfile(path / name, dest / name)


def _download_s3(source: str, dest: Path, client: Any) -> None:
    from llmserve.store.s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(source, field="source")
    if client is None:
        from llmserve.store.options import StoreOptions
        from llmserve.store.s3 import make_client

        client = make_client(StoreOptions())
    for name in ADAPTER_FILES:
        key = f"{prefix}/{name}" if prefix else name
        try:
            client.download_file(bucket, key, str(dest / name))
        except Exception as e:  # botocore's ClientError (404, 403, ...) and connection errors
            raise NotFound(
                f"source {source!r} has no readable {name}: {e}", reason=Reason.SOURCE_NOT_FOUND
            ) from e


def engine_model_config(store: ArtifactStore, engine_id: str, work: Path) -> ModelConfig:
    """The engine's ModelConfig, from its config.json alone (verified against the manifest)."""
    path = store.fetch_file(ENGINES, engine_id, "config.json", work / "config.json")
    return read_hf_config(path.parent)


def register_adapter(
    store: ArtifactStore,
    name: str,
    source: str,
    engine_id: str,
    *,
    work_dir: Path,
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
    s3_client: Any = None,
) -> AdapterManifest:
    """Validates the adapter at `source` against engine `engine_id` and stores it (once).

    Returns the stored adapter's manifest: the one just published, or the one already in the
    store for the same name, files and base model. See the module docstring for the errors.
    """
    check_adapter_name(name)
    if not source:
        raise InvalidArgument(
            f"source is required: {_WHAT}", reason=Reason.FIELD_REQUIRED, field="source"
        )
    if not engine_id:
        raise InvalidArgument(
            "engine_id is required: the id of the engine the adapter must fit",
            reason=Reason.FIELD_REQUIRED,
            field="engine_id",
        )
    engine = get_engine(store, engine_id)
    downloads = work_dir.expanduser() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix="adapter-") as tmp:
        files = Path(tmp) / "adapter"
        copy_adapter_files(source, files, s3_client)
        reader = AdapterReader(
            engine_model_config(store, engine_id, Path(tmp) / "engine"),
            max_lora_rank,
            torch.float32,
            prescaled=prescaled_layers(engine.quantization),
        )
        try:
            adapter = reader.read(name, files)
        except (InvalidArgument, FailedPrecondition) as e:
            message = str(e).replace(str(files), repr(source))
            raise e.with_message(f"{message} (base engine {engine_id})") from e
        aid = adapter_id(engine.model_digest, adapter.digest, name)
        manifest = AdapterManifest(
            adapter_id=aid,
            name=name,
            base_model_digest=engine.model_digest,
            adapter_digest=adapter.digest,
            engine_id=engine_id,
            rank=adapter.rank,
            alpha=adapter.spec.alpha,
            use_rslora=adapter.spec.use_rslora,
            target_modules=list(adapter.target_modules),
            source=source,
        )
        del adapter

        def stage(staging: Path) -> dict[str, Any]:
            for file in ADAPTER_FILES:
                shutil.copyfile(files / file, staging / file)
            return manifest.to_json()

        data, published = store.publish_once(ADAPTERS, aid, stage)
    stored = AdapterManifest.from_json(data)
    log.info(
        "adapter %s (%s) for model %s: %s",
        name,
        aid,
        engine.model_digest[:12],
        "published" if published else "already in the store",
    )
    return stored
