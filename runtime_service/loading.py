"""Resolving what to serve into a running AsyncLLM, and describing it (the Engine message).

`--model PATH` serves a Hugging Face directory, fused in place (development).
`--engine ID` serves an engine from the artifact store (see llmserve/store).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from llmserve.v1 import common_pb2, engine_pb2
from runtime_service.config import RuntimeConfig
from runtime_service.engine.async_llm import AsyncLLM
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.core import CoreInfo

log = logging.getLogger(__name__)

DTYPES = {
    "float32": common_pb2.DTYPE_FLOAT32,
    "bfloat16": common_pb2.DTYPE_BFLOAT16,
    "float16": common_pb2.DTYPE_FLOAT16,
}
QUANTIZATIONS = {
    "none": common_pb2.QUANTIZATION_NONE,
    "int8": common_pb2.QUANTIZATION_INT8_WEIGHT_ONLY,
    "int4": common_pb2.QUANTIZATION_INT4_WEIGHT_ONLY,
    "fp8": common_pb2.QUANTIZATION_FP8,
}


def device_description(device: torch.device) -> tuple[str, str]:
    """(name, target) of the device: ("NVIDIA H100 80GB HBM3", "sm_90") or ("cpu", "cpu")."""
    if device.type != "cuda":
        return "cpu", "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"sm_{major}{minor}"


def model_path(config: RuntimeConfig) -> Path:
    if config.model is not None:
        return config.model.expanduser()
    raise NotImplementedError("serving an engine id from the store lands with the builder")


def engine_config(config: RuntimeConfig, path: Path) -> EngineConfig:
    return EngineConfig(
        model=path,
        dtype=config.dtype,
        device=config.device,
        block_size=config.block_size,
        num_kv_blocks=config.num_kv_blocks,
        gpu_memory_utilization=config.gpu_memory_utilization,
        cpu_kv_cache_bytes=config.cpu_kv_cache_bytes,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        enable_prefix_caching=config.enable_prefix_caching,
        enable_chunked_prefill=config.enable_chunked_prefill,
        load_format=config.load_format,
        cpu_threads=config.cpu_threads,
    )


def describe(info: CoreInfo, config: RuntimeConfig, target: str) -> engine_pb2.Engine:
    """The Engine message of what this runtime serves."""
    return engine_pb2.Engine(
        engine_id=info.engine_id,
        model_name=config.served_model_name or info.model_name,
        architecture=info.architecture,
        target=target,
        quantization=QUANTIZATIONS[info.quantization],
        dtype=DTYPES[info.dtype],
        max_model_len=info.max_model_len,
        source=info.model_path,
    )


def load(config: RuntimeConfig) -> tuple[AsyncLLM, engine_pb2.Engine, str]:
    """Starts the engine core in its own process and waits for the model to load (slow: run
    it off the event loop). Raises llmserve errors naming what is wrong."""
    path = model_path(config)
    llm = AsyncLLM(
        engine_config(config, path), log_level=config.log_level, log_format=config.log_format
    )
    name, target = device_description(torch.device(llm.info.device))
    return llm, describe(llm.info, config, target), name
