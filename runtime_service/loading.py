"""Resolving what to serve into a running AsyncLLM, and describing it (the Engine message).

`--engine ID` serves an engine from the artifact store: the runtime holds it (so it is not
deleted or collected while served) and refuses one built for another target, naming both. A
local store's engine is served in place (its weight files hashed by the loader as it reads
them, one read); an S3 store's is fetched into the local cache, every file verified.
`--model-name`/`--model-source` + `--quantization` serve the engine of that key built for this
device, built by the builder or waited for when missing (runtime_service/engine_key.py).
`--model-path PATH` (development) serves a Hugging Face directory, fused in place, or a .gguf
file, built in place into a store under the engine cache with the builder's code.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from llmserve.device import DeviceInfo, cpu_info, device_info
from llmserve.engine_pb import dtype_value, engine_to_pb
from llmserve.errors import FailedPrecondition
from llmserve.reasons import Reason
from llmserve.store import Hold, open_store
from llmserve.store.engines import ServedEngine, engine_to_serve, hold_engine
from llmserve.store.manifest import ENGINE_WEIGHTS_GLOB
from llmserve.v1 import common_pb2, engine_pb2
from runtime_service.config import RuntimeConfig
from runtime_service.engine.async_llm import AsyncLLM
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.core import CoreInfo
from runtime_service.engine.core_loop import spawn_core
from runtime_service.engine_key import EngineKey, default_model_name, resolve_engine_id
from runtime_service.kernel_cache import seed_kernel_cache, use_kernel_cache
from runtime_service.models.loader import read_engine_manifest
from runtime_service.readahead import start_readahead

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """What warm-up hands to the servicer."""

    llm: AsyncLLM
    engine: engine_pb2.Engine
    device: DeviceInfo
    hold: Hold | None  # released when the runtime stops


def runtime_device(config: RuntimeConfig) -> DeviceInfo:
    """The device facts (cuda-python) of the device the engine will run on."""
    if config.device == "cpu":
        return cpu_info()
    index = int(config.device.split(":")[1]) if config.device.startswith("cuda:") else 0
    info = device_info(index)
    if config.device.startswith("cuda") and not info.is_cuda:
        raise FailedPrecondition(
            f"device {config.device} requested but no CUDA GPU is present",
            reason=Reason.TARGET_MISMATCH,
        )
    return info


def build_in_place(config: RuntimeConfig, gguf: Path, device: DeviceInfo) -> str:
    """Builds a .gguf checkpoint for this device into a development store; its engine id."""
    from builder_service.build import Builder
    from builder_service.spec import BuildSpec

    store = open_store(str(config.engine_cache_dir / "dev-store"))
    builder = Builder(store, config.engine_cache_dir / "dev-work", device=device)
    final = builder.build(BuildSpec(source=str(gguf), target=device.target))
    assert final.engine is not None
    log.info("built %s in place as engine %s", gguf, final.engine.engine_id)
    return final.engine.engine_id


def engine_id_by_key(config: RuntimeConfig, device: DeviceInfo, cancel: threading.Event) -> str:
    """The engine of --model-name/--model-source and --quantization for this device."""
    name = config.model_name or default_model_name(config.model_source)
    return resolve_engine_id(
        open_store(config.store),
        EngineKey(name, config.quantization, device.target),
        pinned=config.engine,
        builder=config.builder,
        source=config.model_source,
        wait=config.wait_for_engine,
        poll_s=config.engine_poll_s,
        cancel=cancel,
    )


def resolve(
    config: RuntimeConfig, device: DeviceInfo, cancel: threading.Event | None = None
) -> tuple[ServedEngine, Hold | None]:
    """The local directory to serve (with whether its files are all verified already: if
    not, the core's loader verifies them, against what was trusted of it), and the store
    hold that keeps it while served.
    `cancel`, set when the runtime stops, ends a wait for an engine or its build."""
    if config.model_path is not None:
        path = config.model_path.expanduser()
        if not path.is_file():
            # A Hugging Face directory (missing: the core says so).
            return ServedEngine(path, False), None
        store_uri, engine_id = (
            str(config.engine_cache_dir / "dev-store"),
            build_in_place(config, path, device),
        )
    elif config.by_key:
        store_uri = config.store
        engine_id = engine_id_by_key(config, device, cancel or threading.Event())
    else:
        store_uri, engine_id = config.store, config.engine
    store = open_store(store_uri, config.store_options())
    hold = hold_engine(store, engine_id)
    start = time.perf_counter()
    try:
        served = engine_to_serve(store, engine_id, config.engine_cache_dir, device.target)
    except BaseException:
        hold.release()
        raise
    log.info(
        "engine %s fetched and verified (SHA-256) %s %s in %.3f s",
        engine_id,
        "into" if served.verified else "in place (weights: as they load) at",
        served.path,
        time.perf_counter() - start,
    )
    return served, hold


def engine_config(config: RuntimeConfig, path: Path, device: DeviceInfo) -> EngineConfig:
    return EngineConfig(
        model=path,
        dtype=config.dtype,
        device=device.torch_device,
        block_size=config.block_size,
        num_kv_blocks=config.num_kv_blocks,
        gpu_memory_utilization=config.gpu_memory_utilization,
        cpu_kv_cache_bytes=config.cpu_kv_cache_bytes,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        enable_prefix_caching=config.enable_prefix_caching,
        enable_chunked_prefill=config.enable_chunked_prefill,
        enable_cuda_graphs=config.enable_cuda_graphs,
        async_scheduling=None if config.async_scheduling else False,
        load_format=config.load_format,
        cpu_threads=config.cpu_threads,
        enable_lora=config.enable_lora,
        max_loras=config.max_loras,
        max_lora_rank=config.max_lora_rank,
        lora_dir=config.lora_dir,
        tensor_parallel_size=config.tensor_parallel_size,
        verify_engine=False,  # load() sets it where resolve() left files unverified
    )


def describe(info: CoreInfo, path: Path, config: RuntimeConfig, target: str) -> engine_pb2.Engine:
    """The Engine message of what this runtime serves."""
    if (path / "manifest.json").exists():  # a built engine: its manifest says it all
        engine = engine_to_pb(read_engine_manifest(path))
    else:
        engine = engine_pb2.Engine(
            model_name=info.model_name,
            architecture=info.architecture,
            target=target,
            quantization=common_pb2.QUANTIZATION_NONE,
            source=info.model_path,
        )
    engine.model_name = config.served_model_name or engine.model_name
    engine.dtype = dtype_value(info.dtype)
    engine.max_model_len = info.max_model_len  # what this runtime accepts
    return engine


def load(config: RuntimeConfig, cancel: threading.Event | None = None) -> Loaded:
    """Resolves the engine, starts its core in a process of its own and waits for the model
    (slow: run it off the event loop). Raises llmserve errors naming what is wrong: a missing
    engine (NotFound), a corrupted file (DataLoss), another target (FailedPrecondition)."""
    device = runtime_device(config)
    # Set before the core process starts, which inherits it (and so do its workers).
    kernels = use_kernel_cache(config.kernel_cache_dir, config.engine_cache_dir)
    # The core process imports torch and the engine while the engine is fetched and verified.
    spawned = spawn_core(config.log_level, config.log_format)
    try:
        served, hold = resolve(config, device, cancel)
    except BaseException:
        spawned[1](0.0)  # it holds nothing yet: killed at once
        raise
    path = served.path
    if not served.verified:  # in place: the disk reads while the core still imports
        start_readahead(sorted(path.glob(ENGINE_WEIGHTS_GLOB)))
    if device.is_cuda:  # before the core compiles anything (its settings are not sent yet)
        seed_kernel_cache(path, kernels, served.files)
    settings = engine_config(config, path, device)
    # In place (a local store, or a directory given with --model-path): the core checks
    # the files, the weights in the read that loads them, before it reports ready, against
    # the manifest this process trusted.
    settings.verify_engine = not served.verified
    settings.engine_manifest_sha256 = served.manifest_sha256
    try:
        llm = AsyncLLM(
            settings, log_level=config.log_level, log_format=config.log_format, spawned=spawned
        )
    except BaseException:
        if hold is not None:
            hold.release()
        raise
    return Loaded(llm, describe(llm.info, path, config, device.target), device, hold)
