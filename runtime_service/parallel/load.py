"""Loading one rank's share of a model: each tensor read on the host, cut, and its part moved.

Engines are degree-agnostic: the builder writes one engine per (model, target, quantization,
options), and each rank cuts its share at load (shard.py), so one artifact serves any
tensor-parallel degree and the store key needs no degree. Tensors stream one at a time from
the safetensors files (or the checkpoint's fusion), so a rank holds its share plus a whole
tensor or a few (one per file read at once), never the whole model; only the share reaches
the device. Each rank hashes the engine's weight files in the read that loads them
(models/checked_read.py: iter_checked).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from llmserve.errors import FailedPrecondition, NotFound
from llmserve.store.manifest import ENGINE_WEIGHTS_GLOB
from runtime_service.engine.config import EngineConfig
from runtime_service.models.checked_read import iter_checked
from runtime_service.models.config import ModelConfig
from runtime_service.models.loader import (
    cast_weights,
    open_engine,
    parse_dtype,
    read_hf_config,
)
from runtime_service.models.open import ModelInfo, dummy_weights
from runtime_service.models.weights import SafetensorsCheckpoint, fuse_hf_weights
from runtime_service.parallel.group import ParallelGroup
from runtime_service.parallel.model import ParallelLlamaModel
from runtime_service.parallel.plan import make_plan
from runtime_service.parallel.shard import shard_tensor

CPU = torch.device("cpu")


Tensors = Callable[[], Iterator[tuple[str, torch.Tensor]]]


@dataclass
class HostWeights:
    """A model's fused weights as a stream of host tensors, and what serving it needs."""

    config: ModelConfig
    tensors: Tensors  # () -> (engine name, host tensor) pairs, one at a time
    quantization: str
    max_positions: int | None
    info: ModelInfo


def open_host_weights(
    config: EngineConfig, dtype: torch.dtype, device: torch.device
) -> HostWeights:
    """What models/open.py's load_model reads, as a stream of host tensors. With
    `config.verify_engine`, an engine's small files are checked against its manifest now and
    each weight file in the read that loads it (DataLoss naming the file and both digests
    once it is read, before load_shard builds the model): every rank checks its own read."""
    path = Path(config.model)
    if not path.is_dir():
        raise NotFound(f"model directory {path} does not exist")
    if (path / "manifest.json").exists():
        manifest, what, expected = open_engine(
            path,
            device,
            verify=config.verify_engine,
            manifest_sha256=config.engine_manifest_sha256,
        )
        engine_dtype = parse_dtype(manifest.dtype)

        def engine_tensors() -> Iterator[tuple[str, torch.Tensor]]:
            paths = sorted(path.glob(ENGINE_WEIGHTS_GLOB))
            if expected is None:
                read = unchecked(paths)
            else:  # each file hashed in this read, checked once read
                read = iter_checked(paths, expected, what)
            for name, t in read:
                yield from cast_weights({name: t}, engine_dtype, CPU).items()

        info = ModelInfo(
            name=manifest.model_name,
            path=path,
            quantization=manifest.quantization,
            tokenizer_path=path,
            engine_id=manifest.engine_id,
        )
        max_positions = config.max_model_len or manifest.max_model_len
        return HostWeights(
            read_hf_config(path), engine_tensors, manifest.quantization, max_positions, info
        )
    if not (path / "config.json").exists():
        raise FailedPrecondition(f"{path} has no config.json (not a Hugging Face checkpoint)")
    model_config = read_hf_config(path)
    if config.load_format == "dummy":
        quant = config.dummy_quantization

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            yield from dummy_weights(model_config, dtype, CPU, quant).items()
    else:
        quant = "none"

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            checkpoint = SafetensorsCheckpoint(path)
            for name, t in fuse_hf_weights(model_config, checkpoint.get):
                yield name, t.to(dtype)

    info = ModelInfo(name=path.name, path=path, quantization=quant, tokenizer_path=path)
    return HostWeights(model_config, tensors, quant, config.max_model_len, info)


def unchecked(paths: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of files verified already (a private copy), memory-mapped by safetensors:
    a tensor's pages are read as its share is cut."""
    from safetensors import safe_open

    for file in paths:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield name, handle.get_tensor(name)


def load_shard(host: HostWeights, group: ParallelGroup) -> ParallelLlamaModel:
    """This rank's model on its device (the group need not be joined yet)."""
    plan = make_plan(host.config, group.rank, group.world_size)
    shard = {}
    for name, t in host.tensors():
        part = shard_tensor(host.config, name, t, host.quantization, plan)
        if part is not None:
            shard[name] = part.to(group.device)
    return ParallelLlamaModel(
        host.config, plan, shard, host.quantization, group, host.max_positions
    )
