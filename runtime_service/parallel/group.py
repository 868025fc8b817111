"""The process group of a tensor-parallel engine: gloo on the CPU, NCCL on CUDA.

Rank 0 (the engine core) makes the rendezvous store on a free loopback port before it starts
the workers, and passes them the port; every rank then joins torch.distributed's default
group. One tensor-parallel engine per process: `close()` leaves the group so that another
can be made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

HOST = "127.0.0.1"
# Collectives only run while rank 0 steps (an idle worker waits on its command pipe, not in a
# collective), so a collective that takes this long means a rank is gone or stuck.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


def master_store(world_size: int) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free port (its `.port`), made before the workers start."""
    return dist.TCPStore(
        HOST, 0, world_size, is_master=True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False
    )


@dataclass
class ParallelGroup:
    rank: int
    world_size: int
    device: torch.device

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sums `t` over the ranks in place (and returns it)."""
        dist.all_reduce(t)
        return t

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's `t` into every rank's `t` (same shape and dtype everywhere)."""
        dist.broadcast(t, src=0)
        return t

    def gather(self, t: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's `t` (same shape everywhere), in rank order, on rank 0; None elsewhere."""
        parts = [torch.empty_like(t) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(t, parts, dst=0)
        return parts

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def join_group(
    rank: int, world_size: int, port: int, device: torch.device, store: dist.Store | None = None
) -> ParallelGroup:
    """Joins the group (rank 0 passes the store it made; workers connect to its port)."""
    if store is None:
        store = dist.TCPStore(HOST, port, world_size, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
        **kwargs,
    )
    return ParallelGroup(rank, world_size, device)
