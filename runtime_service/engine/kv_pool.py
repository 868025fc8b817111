"""Sizing the KV cache pool: how many blocks fit in the memory set aside for it."""

from __future__ import annotations

import logging

import torch

from runtime_service.engine.config import EngineConfig
from runtime_service.models.llama import LlamaModel

log = logging.getLogger(__name__)


def bytes_per_block(model: LlamaModel, block_size: int) -> int:
    c = model.config
    element = torch.empty((), dtype=model.dtype).element_size()
    return 2 * c.num_layers * block_size * c.num_kv_heads * c.head_dim * element


def activation_reserve(model: LlamaModel, config: EngineConfig) -> int:
    """A bound on one step's transient memory (activations, logits, sampler buffers)."""
    c = model.config
    element = torch.empty((), dtype=model.dtype).element_size()
    per_token = 2 * c.intermediate_size + 4 * c.hidden_size + c.q_size + 2 * c.kv_size
    activations = config.max_num_batched_tokens * per_token * element * 2
    logits = config.max_num_seqs * c.vocab_size * 4 * 4
    return activations + logits + (256 << 20)


def num_kv_blocks(config: EngineConfig, model: LlamaModel, device: torch.device) -> int:
    """Blocks in the pool: explicit, else a fraction of GPU memory, else CPU bytes."""
    per_block = bytes_per_block(model, config.block_size)
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        in_use = total - free  # weights and anything else already on the device
        budget = total * config.gpu_memory_utilization - in_use - activation_reserve(model, config)
        blocks = int(budget // per_block)
        log.info("KV cache: %.2f GiB for %d blocks", blocks * per_block / 2**30, blocks)
        return max(blocks, 0)
    return max(config.cpu_kv_cache_bytes // per_block, 0)
