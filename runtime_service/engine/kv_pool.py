"""Sizing the KV cache pool: how many blocks fit in the memory left for it.

On CUDA the pool gets what is left of `gpu_memory_utilization` of the device after the
weights, the LoRA slots and the peak of a profiled worst-case step (a forward of
`max_num_batched_tokens` tokens, then logits and the most expensive sampling of
`max_num_seqs` rows), with room for the decode graphs' activations. On the CPU it gets
`cpu_kv_cache_bytes`, or by default a tenth of the available memory (at most 4 GiB), and at
least what one sequence of max_model_len needs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from runtime_service.engine.config import EngineConfig
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.penalties import PenaltyState
from runtime_service.engine.request import Request
from runtime_service.engine.sampler import sample
from runtime_service.models.attention import AttentionMetadata
from runtime_service.models.llama import LlamaModel
from runtime_service.models.loader import allocate_kv_caches

log = logging.getLogger(__name__)

CPU_DEFAULT_FRACTION = 0.1
CPU_DEFAULT_MAX_BYTES = 4 << 30


def bytes_per_block(model: LlamaModel, block_size: int) -> int:
    c = model.config
    element = torch.empty((), dtype=model.dtype).element_size()
    return 2 * c.num_layers * block_size * c.num_kv_heads * c.head_dim * element


def available_host_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes); 0 where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@torch.inference_mode()
def profile_step_peak(model: LlamaModel, config: EngineConfig, max_model_len: int) -> int:
    """Peak bytes the worst step allocates beyond what is allocated now (CUDA)."""
    device = model.device
    bs = config.block_size
    num_tokens = config.max_num_batched_tokens
    seq_len = min(num_tokens, max_model_len)
    num_seqs = -(-num_tokens // seq_len)
    blocks_per_seq = -(-seq_len // bs)
    kv = allocate_kv_caches(model.config, num_seqs * blocks_per_seq, bs, model.dtype, device)
    lens = [min(seq_len, num_tokens - i * seq_len) for i in range(num_seqs)]
    starts = [sum(lens[:i]) for i in range(num_seqs + 1)]
    tables = torch.arange(num_seqs * blocks_per_seq, dtype=torch.int32, device=device)
    positions = torch.cat([torch.arange(n, device=device) for n in lens])
    seq_of = torch.repeat_interleave(
        torch.arange(num_seqs, device=device), torch.tensor(lens, device=device)
    )
    meta = AttentionMetadata(
        slot_mapping=seq_of * blocks_per_seq * bs + positions,
        block_tables=tables.view(num_seqs, blocks_per_seq),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        query_lens_cpu=lens,
        seq_lens_cpu=lens,
    )
    ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    hidden = model(ids, positions, kv, meta)
    rows = hidden[torch.arange(config.max_num_seqs, device=device) % num_tokens]
    del hidden
    logits = model.compute_logits(rows)
    worst = SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=0)
    reqs = [Request(f"p{i}", [0], worst, (), max_model_len) for i in range(len(logits))]
    sample(logits, reqs, PenaltyState(model.config.vocab_size, device, len(reqs)))
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del kv, logits
    torch.cuda.empty_cache()
    return peak


def num_kv_blocks(
    config: EngineConfig, model: LlamaModel, device: torch.device, max_model_len: int
) -> int:
    """Blocks in the pool: explicit, else what the device has left (see module docstring)."""
    per_block = bytes_per_block(model, config.block_size)
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    if device.type == "cuda":
        start = time.perf_counter()
        peak = profile_step_peak(model, config, max_model_len)
        seconds = time.perf_counter() - start
        # The decode graphs keep their own pool: activations of up to max_num_seqs tokens.
        graphs = 0
        if config.enable_cuda_graphs:
            graphs = peak * min(1.0, config.max_num_seqs / config.max_num_batched_tokens)
        free, total = torch.cuda.mem_get_info(device)
        in_use = total - free  # weights, LoRA slots and anything else already on the device
        budget = total * config.gpu_memory_utilization - in_use - peak - graphs - (256 << 20)
        blocks = int(budget // per_block)
        log.info(
            "KV cache: %.2f GiB for %d blocks (step peak %.2f GiB, graphs %.2f GiB; "
            "profiled in %.3f s)",
            blocks * per_block / 2**30,
            blocks,
            peak / 2**30,
            graphs / 2**30,
            seconds,
        )
        return max(blocks, 0)
    if config.cpu_kv_cache_bytes is not None:
        return max(config.cpu_kv_cache_bytes // per_block, 0)
    budget = min(available_host_memory() * CPU_DEFAULT_FRACTION, CPU_DEFAULT_MAX_BYTES)
    one_sequence = -(-max_model_len // config.block_size) + 1
    return max(int(budget // per_block), one_sequence)
