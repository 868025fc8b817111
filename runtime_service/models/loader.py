"""Loading a model: from a Hugging Face directory (fused in place) or an engine directory."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from llmserve.device import device_info
from llmserve.errors import FailedPrecondition
from llmserve.store.manifest import (
    ENGINE_FORMAT_VERSION,
    ENGINE_WEIGHTS_GLOB,
    EngineManifest,
    FileEntry,
    verify_files,
)
from llmserve.targets import require_engine_target
from runtime_service.models.checked_read import read_checked, split_files
from runtime_service.models.config import ModelConfig
from runtime_service.models.llama import LlamaModel
from runtime_service.models.safetensors_stream import load_files_streamed
from runtime_service.models.weights import SafetensorsCheckpoint, fuse_hf_weights

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {name!r}")
    return DTYPES[name]


def read_hf_config(path: Path) -> ModelConfig:
    return ModelConfig.from_hf(json.loads((path / "config.json").read_text()))


def cast_weights(
    weights: Mapping[str, torch.Tensor], dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Floating tensors to `dtype` (quantized payloads and float32 scales keep theirs)."""
    out = {}
    for name, t in weights.items():
        keep = (
            not t.is_floating_point()
            or t.dtype == torch.float8_e4m3fn
            or (name.endswith((".scales", ".zeros", ".act_scale")))
        )
        out[name] = t.to(device=device, dtype=None if keep else dtype)
    return out


def load_hf_model(
    path: Path, dtype: torch.dtype, device: torch.device, max_positions: int | None = None
) -> LlamaModel:
    """Reads a Hugging Face checkpoint directory and builds the unquantized model."""
    config = read_hf_config(path)
    checkpoint = SafetensorsCheckpoint(path)
    weights = {
        name: t.to(device=device, dtype=dtype)
        for name, t in fuse_hf_weights(config, checkpoint.get)
    }
    return LlamaModel(config, weights, "none", max_positions)


def allocate_kv_caches(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[torch.Tensor]:
    """One [2, num_blocks, block_size, num_kv_heads, head_dim] tensor per layer."""
    shape = (2, num_blocks, block_size, config.num_kv_heads, config.head_dim)
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]


def read_engine_manifest(engine_dir: Path, sha256: str | None = None) -> EngineManifest:
    """The manifest of an engine directory (as published by the builder); with sha256 (the
    digest the runtime trusted), DataLoss if the file has changed since."""
    return EngineManifest.read(engine_dir, sha256)


def open_engine(
    engine_dir: Path,
    device: torch.device,
    *,
    verify: bool,
    check_target: bool = True,
    manifest_sha256: str | None = None,
) -> tuple[EngineManifest, str, dict[str, FileEntry] | None]:
    """What every load of an engine checks before its weights (load_engine here, each
    tensor-parallel rank in parallel/load.py): the manifest (against the trusted digest), its
    format version, its target (with check_target) and, with verify, its small files.
    Returns the manifest, the engine's name for errors, and the weight files' manifest
    entries for the read to check its bytes against (None without verify)."""
    manifest = read_engine_manifest(engine_dir, manifest_sha256)
    if manifest.format_version > ENGINE_FORMAT_VERSION:
        raise FailedPrecondition(
            f"engine {manifest.engine_id} has format version {manifest.format_version}; this "
            f"runtime reads versions up to {ENGINE_FORMAT_VERSION}"
        )
    if check_target:
        device_target = "cpu" if device.type == "cpu" else device_info(device.index or 0).target
        require_engine_target(manifest.engine_id, manifest.target, device_target)
    what = f"engine {manifest.engine_id} at {engine_dir}"
    weight_files, other_files = split_files(manifest.files)
    if not verify:
        return manifest, what, None
    verify_files(engine_dir, other_files, what)
    return manifest, what, weight_files


def load_engine(
    engine_dir: Path,
    device: torch.device,
    *,
    verify: bool = True,
    check_target: bool = True,
    max_positions: int | None = None,
    manifest_sha256: str | None = None,
) -> LlamaModel:
    """Builds the model of an engine directory (a store fetch, or the builder's staging).

    verify: check every file against the manifest's SHA-256 (a mismatch raises
        llmserve.errors.DataLoss naming the file and both digests): the small files first,
        the weight files as they are read (one read each: models/checked_read.py).
    check_target: refuse (FailedPrecondition, naming both) an engine built for another
        target than `device` ("cpu" or its sm_XY); the builder turns this off to validate
        engines for other GPUs on its own device.
    max_positions: rotary tables length; default the engine's max_model_len.
    manifest_sha256: the digest of the manifest the runtime trusted (an engine served in
        place from a store whose directory others can write): other bytes raise DataLoss.
    """
    manifest, what, expected = open_engine(
        engine_dir,
        device,
        verify=verify,
        check_target=check_target,
        manifest_sha256=manifest_sha256,
    )
    start = time.perf_counter()
    paths = sorted(engine_dir.glob(ENGINE_WEIGHTS_GLOB))
    weights = read_weights(paths, device, expected, what)
    config = read_hf_config(engine_dir)
    weights = cast_weights(weights, parse_dtype(manifest.dtype), device)
    model = LlamaModel(
        config, weights, manifest.quantization, max_positions or manifest.max_model_len
    )
    seconds = time.perf_counter() - start
    nbytes = sum(p.stat().st_size for p in paths)
    log.info(
        "engine weights loaded: %d bytes in %.3f s (%.2f GB/s) onto %s",
        nbytes,
        seconds,
        nbytes / max(seconds, 1e-9) / 1e9,
        device,
    )
    return model


def read_weights(
    paths: list[Path],
    device: torch.device,
    expected: Mapping[str, FileEntry] | None = None,
    what: str = "",
) -> dict[str, torch.Tensor]:
    """The tensors of an engine's weight files on `device`: on a GPU streamed through pinned
    buffers (safetensors_stream.py); on the CPU safetensors' own reader (memory-mapped).
    With `expected` (the manifest's entries of the weight files), streamed on either device
    and checked in the same read (checked_read.py); `what` names the engine in errors."""
    if expected is not None:
        return read_checked(paths, device, expected, what)
    if device.type == "cuda":
        return load_files_streamed(paths, device)
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for path in paths:
        weights.update(load_file(path, device=str(device)))
    return weights
