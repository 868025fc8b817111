"""Rank 0's side of a tensor-parallel engine: starting the workers, driving them, watching them.

The engine core (rank 0) keeps the scheduler, the sampler and everything else; its model is a
ParallelLlamaModel whose driver is a Workers: each forward and LM-head product is announced
to every worker over its pipe and its tensors broadcast, then rank 0 computes its own share.

Failures:
- start-up: a worker that cannot load its share answers Failed; one that dies first is seen
  by its pipe closing. Either way the engine fails to start with an error naming the rank and
  the cause (the worker's exception, or its exit status), and the other workers are stopped.
- afterwards: a watchdog thread per worker waits on its process; if one exits while the
  engine runs, rank 0 logs which and exits with status 1 at once (a collective with a dead
  peer can block forever on NCCL). In the runtime the core is a process of its own, so its
  frontend sees the core die: the runtime reports NOT_SERVING and exits non-zero.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch

from llmserve.errors import FailedPrecondition, Unavailable
from runtime_service.engine.config import EngineConfig
from runtime_service.models.attention import AttentionMetadata
from runtime_service.models.loader import read_hf_config
from runtime_service.models.open import ModelInfo
from runtime_service.parallel.group import ParallelGroup, join_group, master_store
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
from runtime_service.parallel.plan import make_plan

log = logging.getLogger(__name__)
CPU = torch.device("cpu")
SHUTDOWN_WAIT_S = 30.0
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def exit_on_worker_death(rank: int, status: int) -> None:
    log.critical(
        "tensor-parallel worker rank %d exited with status %d; the engine cannot continue",
        rank,
        status,
    )
    logging.shutdown()
    os._exit(1)


def rank_devices(device: torch.device, world_size: int) -> list[torch.device]:
    """The device of each rank: the CPU for all, or world_size GPUs from rank 0's on."""
    if device.type != "cuda":
        return [CPU] * world_size
    first = device.index or 0
    count = torch.cuda.device_count()
    if first + world_size > count:
        raise FailedPrecondition(
            f"tensor_parallel_size {world_size} from cuda:{first} needs {first + world_size}"
            f" GPUs; this node has {count}"
        )
    return [torch.device("cuda", first + r) for r in range(world_size)]


def log_format() -> str:
    """The format of this process's logs ("json" if the root logger writes JSON), for workers."""
    from llmserve.logs import JsonFormatter

    handlers = logging.getLogger().handlers
    return "json" if any(isinstance(h.formatter, JsonFormatter) for h in handlers) else "text"


def cpu_threads_per_rank(world_size: int) -> int:
    """Without --cpu-threads, CPU ranks share the cores instead of each taking all of them."""
    return max(1, (os.cpu_count() or 1) // world_size)


class Workers:
    """The worker processes of ranks 1..N-1, their pipes and the process group."""

    def __init__(self, on_death: Callable[[int, int], None] = exit_on_worker_death) -> None:
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self.group: ParallelGroup | None = None
        self.on_death = on_death
        self._closing = threading.Event()
        self._store = None

    # Start-up.
    def spawn(self, config: EngineConfig, dtype: torch.dtype, devices: list[torch.device]) -> int:
        """Starts ranks 1.. and sends their specs; returns the rendezvous port."""
        world = len(devices)
        self._store = master_store(world)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        root = logging.getLogger()
        level = logging.getLevelName(root.getEffectiveLevel()).lower()
        for rank in range(1, world):
            ours, theirs = socket.socketpair()
            cmd = [
                sys.executable,
                "-m",
                "runtime_service.parallel.worker",
                "--fd",
                str(theirs.fileno()),
            ]
            proc = subprocess.Popen(
                cmd, pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL
            )
            theirs.close()
            self.procs.append(proc)
            self.conns.append(Connection(ours.detach()))
            spec = WorkerSpec(
                rank=rank,
                world_size=world,
                port=self._store.port,
                device=str(devices[rank]),
                dtype=str(dtype).removeprefix("torch."),
                engine_config=config,
                parent_pid=os.getpid(),
                log_level=level if level in ("debug", "info", "warning", "error") else "info",
                log_format=log_format(),
            )
            send(self.conns[-1], spec)
        return self._store.port

    def wait_ready(self) -> None:
        """Returns when every worker has loaded its share; raises naming the first that
        could not (Unavailable if it died; otherwise its llmserve error, DataLoss for a
        corrupted file, or FailedPrecondition with the cause of another exception)."""
        for rank, (conn, proc) in enumerate(zip(self.conns, self.procs, strict=True), start=1):
            try:
                answer = recv(conn)
            except (EOFError, OSError):
                status = proc.wait()
                raise Unavailable(
                    f"tensor-parallel rank {rank} exited with status {status} before it was"
                    " ready (its log is above)"
                ) from None
            if isinstance(answer, Failed):
                message = f"tensor-parallel rank {answer.rank} failed to start: {answer.cause}"
                if answer.error is not None:  # keeps its class: DataLoss stays DATA_LOSS
                    raise answer.error.with_message(message)
                raise FailedPrecondition(message)
            assert isinstance(answer, Ready)

    def join(self, rank0_device: torch.device) -> ParallelGroup:
        """Joins the process group as rank 0 and starts the watchdogs."""
        for rank, proc in enumerate(self.procs, start=1):
            threading.Thread(
                target=self._watch, args=(rank, proc), name=f"tp-watchdog-{rank}", daemon=True
            ).start()
        self.group = join_group(0, len(self.procs) + 1, 0, rank0_device, store=self._store)
        return self.group

    def _watch(self, rank: int, proc: subprocess.Popen) -> None:
        status = proc.wait()
        if not self._closing.is_set():
            self.on_death(rank, status)

    # Driving.
    def _send(self, message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)  # once for all workers
        for conn in self.conns:
            conn.send_bytes(data)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
        lora: object,
    ) -> None:
        tables = meta.block_tables
        num_blocks, block_size = kv_caches[0].shape[1:3]
        step = ForwardStep(
            num_tokens=input_ids.shape[0],
            num_seqs=tables.shape[0],
            table_width=tables.shape[1],
            num_cache_blocks=num_blocks,
            block_size=block_size,
            query_lens_cpu=np.asarray(meta.query_lens_cpu),
            seq_lens_cpu=np.asarray(meta.seq_lens_cpu),
            lora=move_batch(lora, CPU),
        )
        self._send(step)
        packed = torch.cat(
            [
                input_ids.long(),
                positions.long(),
                meta.slot_mapping.long(),
                tables.reshape(-1).long(),
                meta.query_start_loc.long(),
                meta.seq_lens.long(),
            ]
        )
        assert self.group is not None
        self.group.broadcast(packed)

    def logits(self, hidden: torch.Tensor) -> None:
        self._send(LogitsStep(hidden.shape[0]))
        assert self.group is not None
        self.group.broadcast(hidden.contiguous())

    def lora_write(self, slot: int, adapter: object) -> None:
        self._send(LoRAWrite(slot, adapter))

    def lora_clear(self, slot: int) -> None:
        self._send(LoRAClear(slot))

    # Shutdown.
    def close(self, kill: bool = False) -> None:
        """Stops the workers (Shutdown, then a kill if one does not exit; kill: at once, as
        after a failed start-up) and leaves the group."""
        if self._closing.is_set():
            return  # closed already (close() and the exit hook may both run)
        self._closing.set()
        if kill:
            for proc in self.procs:
                proc.kill()
        for conn in self.conns:
            with contextlib.suppress(OSError):  # already gone
                send(conn, Shutdown())
        for proc in self.procs:
            try:
                proc.wait(SHUTDOWN_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self.conns:
            conn.close()
        if self.group is not None:
            self.group.close()
        self._store = None


def load_parallel_model(
    config: EngineConfig, dtype: torch.dtype, device: torch.device
) -> tuple[ParallelLlamaModel, ModelInfo, Workers]:
    """Rank 0's share of the model, with the workers of the other ranks started and ready."""
    world = config.tensor_parallel_size
    devices = rank_devices(device, world)
    if device.type == "cpu" and not config.cpu_threads:
        torch.set_num_threads(cpu_threads_per_rank(world))
    if (Path(config.model) / "config.json").exists():  # a split that cannot be made: say so now
        whole = read_hf_config(Path(config.model))
        for rank in range(world):
            make_plan(whole, rank, world)
    workers = Workers()
    try:
        workers.spawn(config, dtype, devices)
        host = open_host_weights(config, dtype, device)
        model = load_shard(host, ParallelGroup(0, world, devices[0]))
        info = host.info
        del host
        workers.wait_ready()
        model.group = workers.join(devices[0])
    except BaseException:
        workers.close(kill=True)
        raise
    model.driver = workers
    atexit.register(workers.close)  # an offline LLM nobody closed: stop the workers cleanly
    log.info("tensor parallel: %d ranks on %s", world, ", ".join(map(str, devices)))
    return model, info, workers
