"""A tensor-parallel worker process: one rank's share of the model on its device.

Started by rank 0 (workers.py) as `python -m runtime_service.parallel.worker --fd N`, where N
is its end of a socket pair. It reads its WorkerSpec, loads and cuts the model, answers Ready
(or Failed with the cause), joins the process group and then runs whatever rank 0 sends:
the same forwards and LM-head products, on its share, until Shutdown or until rank 0 is
gone (its pipe closes, or the kernel kills it: the parent-death signal is SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from multiprocessing.connection import Connection

import torch

from llmserve.errors import LLMServeError
from runtime_service.models.attention import AttentionMetadata
from runtime_service.models.loader import allocate_kv_caches, parse_dtype
from runtime_service.parallel.group import ParallelGroup, join_group
from runtime_service.parallel.load import load_shard, open_host_weights
from runtime_service.parallel.lora import move_batch
from runtime_service.parallel.messages import (
    Failed,
    ForwardStep,
    LogitsStep,
    LoRAClear,
    LoRAWrite,
    Ready,
    Shutdown,
    WorkerSpec,
    recv,
    send,
)
from runtime_service.parallel.model import ParallelLlamaModel
from runtime_service.parallel.workers import cpu_threads_per_rank

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent (rank 0) dies (Linux), or now if it already has."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


class Worker:
    def __init__(self, model: ParallelLlamaModel, group: ParallelGroup, conn: Connection) -> None:
        self.model = model
        self.group = group
        self.conn = conn
        self.kv_caches: list[torch.Tensor] = []

    def _caches(self, num_blocks: int, block_size: int) -> list[torch.Tensor]:
        """KV caches the shape of rank 0's (start-up profiling uses a temporary one)."""
        if not self.kv_caches or self.kv_caches[0].shape[1:3] != (num_blocks, block_size):
            self.kv_caches = []
            m = self.model
            self.kv_caches = allocate_kv_caches(m.config, num_blocks, block_size, m.dtype, m.device)
        return self.kv_caches

    def forward(self, step: ForwardStep) -> None:
        device = self.model.device
        packed = torch.empty(step.packed_size, dtype=torch.long, device=device)
        self.group.broadcast(packed)
        t, b, w = step.num_tokens, step.num_seqs, step.table_width
        ids, positions, slots = packed[:t], packed[t : 2 * t], packed[2 * t : 3 * t]
        rest = packed[3 * t :]
        tables = rest[: b * w].view(b, w).to(torch.int32)
        qsl = rest[b * w : b * w + b + 1].to(torch.int32)
        seq_lens = rest[b * w + b + 1 :].to(torch.int32)
        meta = AttentionMetadata(
            slot_mapping=slots,
            block_tables=tables,
            query_start_loc=qsl,
            seq_lens=seq_lens,
            query_lens_cpu=step.query_lens_cpu,
            seq_lens_cpu=step.seq_lens_cpu,
        )
        if self.model.lora_slots is not None:
            self.model.lora_slots.batch = move_batch(step.lora, device)
        kv = self._caches(step.num_cache_blocks, step.block_size)
        self.model(ids, positions, kv, meta)

    def logits(self, step: LogitsStep) -> None:
        m = self.model
        hidden = torch.empty(step.num_rows, m.config.hidden_size, dtype=m.dtype, device=m.device)
        self.group.broadcast(hidden)
        m.compute_logits(hidden)

    @torch.inference_mode()
    def serve(self) -> None:
        while True:
            try:
                message = recv(self.conn)
            except EOFError:
                log.error("rank %d: rank 0 is gone; exiting", self.group.rank)
                os._exit(1)
            if isinstance(message, ForwardStep):
                self.forward(message)
            elif isinstance(message, LogitsStep):
                self.logits(message)
            elif isinstance(message, LoRAWrite):
                assert self.model.lora_slots is not None
                self.model.lora_slots.write(message.slot, message.adapter)
            elif isinstance(message, LoRAClear):
                assert self.model.lora_slots is not None
                self.model.lora_slots.clear(message.slot)
            elif isinstance(message, Shutdown):
                return


def start(spec: WorkerSpec, conn: Connection) -> Worker:
    """Loads the rank's share, its engine's files checked in the read that loads them as
    rank 0's are (none trusts another's check); Failed(cause) to rank 0 and exit 1 if it
    cannot."""
    try:
        device = torch.device(spec.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        config = spec.engine_config
        if config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        elif device.type == "cpu":
            torch.set_num_threads(cpu_threads_per_rank(spec.world_size))
        host = open_host_weights(config, parse_dtype(spec.dtype), device)
        group = ParallelGroup(spec.rank, spec.world_size, device)
        model = load_shard(host, group)
        del host
        if config.enable_lora:
            model.attach_lora(config.max_loras, config.max_lora_rank)
    except Exception as e:
        log.exception("rank %d failed to start", spec.rank)
        error = e if isinstance(e, LLMServeError) else None  # DataLoss, NotFound, ...
        send(conn, Failed(spec.rank, f"{type(e).__name__}: {e}", error))
        sys.exit(1)
    send(conn, Ready(spec.rank))
    join_group(spec.rank, spec.world_size, spec.port, device)
    return Worker(model, group, conn)


def main() -> None:
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    conn = Connection(socket.socket(fileno=fd).detach())
    spec: WorkerSpec = recv(conn)
    from llmserve.logs import dump_stacks_on_sigusr1, setup_logging

    setup_logging(spec.log_level, spec.log_format)
    dump_stacks_on_sigusr1()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(spec.parent_pid)
    worker = start(spec, conn)
    worker.serve()
    worker.group.close()


if __name__ == "__main__":
    main()
