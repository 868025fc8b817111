"""What rank 0 sends each worker over its command pipe (pickled), and what a worker answers.

Small values travel in the pipe; the step's tensors follow as broadcasts over the process
group (a worker enters the broadcast after it has read the message that announces it). An
idle worker waits on its pipe, never in a collective, so no collective timeout runs while the
engine has nothing to do.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np


def send(conn: Connection, message: object) -> None:
    """Plain pickle: multiprocessing's own pickler would pass tensors as file descriptors
    that only its own children can receive."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """First message: who the worker is and what it loads."""

    rank: int
    world_size: int
    port: int  # of rank 0's rendezvous store on 127.0.0.1
    device: str  # "cpu" | "cuda:N"
    dtype: str
    engine_config: Any  # EngineConfig
    parent_pid: int
    log_level: str
    log_format: str


@dataclass(frozen=True, slots=True)
class Ready:
    rank: int


@dataclass(frozen=True, slots=True)
class Failed:
    rank: int
    cause: str  # "ExceptionType: message"
    error: Any = None  # the llmserve error (DataLoss, NotFound, ...), raised again by rank 0


@dataclass(frozen=True, slots=True)
class ForwardStep:
    """A forward of `num_tokens` tokens of `num_seqs` requests; then one int64 broadcast of
    [ids | positions | slot_mapping | block_tables (num_seqs x table_width) | query_start_loc |
    seq_lens]."""

    num_tokens: int
    num_seqs: int
    table_width: int
    num_cache_blocks: int  # of the KV cache rank 0 runs this forward on (workers mirror it)
    block_size: int
    query_lens_cpu: np.ndarray
    seq_lens_cpu: np.ndarray
    lora: Any  # LoRABatch with CPU tensors, or None

    @property
    def packed_size(self) -> int:
        return 3 * self.num_tokens + self.num_seqs * self.table_width + 2 * self.num_seqs + 1


@dataclass(frozen=True, slots=True)
class LogitsStep:
    """LM head over `num_rows` hidden states; then one broadcast of them [num_rows, hidden]."""

    num_rows: int


@dataclass(frozen=True, slots=True)
class LoRAWrite:
    slot: int
    adapter: Any  # LoRAAdapter, whole (the worker cuts its share)


@dataclass(frozen=True, slots=True)
class LoRAClear:
    slot: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass
