"""Checkpoints to build from: Hugging Face directories and GGUF files, local or in S3.

A source is opened (downloaded first when it is an s3:// URI; never from a model hub),
digested, and loaded through transformers in float32 — GGUF files through transformers'
GGUF reader, which dequantizes them. The model digest is a SHA-256 over the files that
decide the model: weights, config and tokenizer (for GGUF, the one file holds all three).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmserve.errors import FailedPrecondition, InvalidArgument, NotFound
from llmserve.paths import check_path
from llmserve.reasons import Reason
from llmserve.store.manifest import sha256_file

log = logging.getLogger(__name__)

# Files of a Hugging Face directory that are part of the model (besides *.safetensors).
HF_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def wanted(name: str) -> bool:
    return name in HF_FILES or name.endswith(".safetensors")


@dataclass(frozen=True, slots=True)
class Source:
    """A checkpoint on local disk: a Hugging Face directory or a .gguf file."""

    uri: str  # as the caller gave it (local path or s3:// URI)
    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix == ".gguf"

    @property
    def default_name(self) -> str:
        return self.path.stem if self.is_gguf else self.path.name

    def files(self) -> list[Path]:
        if self.is_gguf:
            return [self.path]
        return sorted(p for p in self.path.iterdir() if p.is_file() and wanted(p.name))

    def digest(self) -> str:
        """SHA-256 over (name, SHA-256) of every model file; a GGUF file is named by role."""
        lines = []
        for p in self.files():
            name = "model.gguf" if self.is_gguf else p.name
            lines.append(f"{name}\0{sha256_file(p)}\n")
        return hashlib.sha256("".join(lines).encode()).hexdigest()


def check_local(uri: str, path: Path, weights_required: bool = True) -> Source:
    """The Source at path; NotFound or InvalidArgument naming `source` when unusable.
    weights_required=False accepts a directory of config.json and tokenizer alone."""
    if not path.exists():
        raise NotFound(f"source {uri!r} does not exist", reason=Reason.SOURCE_NOT_FOUND)
    if path.is_file():
        if path.suffix != ".gguf":
            raise InvalidArgument(
                f"source must be a Hugging Face directory or a .gguf file, got the file {uri!r}",
                reason=Reason.INVALID_FIELD,
                field="source",
            )
        return Source(uri, path)
    if not (path / "config.json").is_file():
        raise InvalidArgument(
            f"source {uri!r} is a directory without config.json",
            reason=Reason.INVALID_FIELD,
            field="source",
        )
    if weights_required and not any(p.suffix == ".safetensors" for p in path.iterdir()):
        raise FailedPrecondition(
            f"source {uri!r} has no *.safetensors weights (other weight formats are not read)",
            reason=Reason.SOURCE_UNSUPPORTED,
        )
    return Source(uri, path)


def download_s3(uri: str, client: Any, dest: Path) -> Path:
    """Copies s3://bucket/key.gguf, or the model files under s3://bucket/prefix/, to dest."""
    from llmserve.store.s3 import parse_s3_uri

    bucket, key = parse_s3_uri(uri, field="source")
    dest.mkdir(parents=True, exist_ok=True)
    if key.endswith(".gguf"):
        target = dest / Path(key).name
        try:
            client.download_file(bucket, key, str(target))
        except Exception as e:
            raise NotFound(
                f"source {uri!r} cannot be read: {e}", reason=Reason.SOURCE_NOT_FOUND
            ) from e
        return target
    prefix = key + "/" if key else ""
    names = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix) :]
            if "/" not in name and wanted(name):
                names.append(name)
    if not names:
        raise NotFound(f"source {uri!r} holds no model files", reason=Reason.SOURCE_NOT_FOUND)
    model_dir = dest / "model"
    model_dir.mkdir(exist_ok=True)
    for name in names:
        client.download_file(bucket, prefix + name, str(model_dir / name))
    return model_dir


def open_source(
    uri: str, download_dir: Path, s3_client: Any = None, weights_required: bool = True
) -> Source:
    """A local Source for a path or s3:// URI (downloaded into download_dir)."""
    if not uri:
        raise InvalidArgument(
            "source is required: a Hugging Face directory, .gguf file or s3://",
            reason=Reason.FIELD_REQUIRED,
            field="source",
        )
    check_path("source", uri)
    if uri.startswith("s3://"):
        if s3_client is None:
            from llmserve.store.options import StoreOptions
            from llmserve.store.s3 import make_client

            s3_client = make_client(StoreOptions())
        return check_local(uri, download_s3(uri, s3_client, download_dir), weights_required)
    if "://" in uri:
        raise InvalidArgument(
            f"source must be a local path or s3:// URI, got {uri!r}",
            reason=Reason.INVALID_FIELD,
            field="source",
        )
    return check_local(uri, Path(uri).expanduser().resolve(), weights_required)


def read_hf_config(source: Source) -> dict[str, Any]:
    """The model's config.json contents (for GGUF, as transformers maps its metadata)."""
    if not source.is_gguf:
        return json.loads((source.path / "config.json").read_text())
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source.path.parent, gguf_file=source.path.name)
    return _plain_config(config.to_dict(), config)


def _plain_config(data: dict[str, Any], config: Any) -> dict[str, Any]:
    """A GGUF-derived config without the GGUF loading hint, naming its architecture."""
    data.pop("quantization_config", None)
    if not data.get("architectures"):
        from transformers import AutoModelForCausalLM

        model_class = AutoModelForCausalLM._model_mapping[type(config)]
        data["architectures"] = [model_class.__name__]
    return data


@dataclass(slots=True)
class LoadedSource:
    """The checkpoint in memory: transformers model (float32, eval) and tokenizer."""

    model: Any
    tokenizer: Any
    hf_config: dict[str, Any]


def load_source(source: Source) -> LoadedSource:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.is_gguf:
        where, extra = source.path.parent, {"gguf_file": source.path.name}
    else:
        where, extra = source.path, {}
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    model.eval()
    hf_config = (
        _plain_config(model.config.to_dict(), model.config)
        if source.is_gguf
        else read_hf_config(source)
    )
    return LoadedSource(model, tokenizer, hf_config)
