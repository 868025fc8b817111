"""LoRAManager: the engine's adapters — host tier, device slots, and the requests using them.

Two tiers. Every loaded adapter is held in host memory (pinned on CUDA). A fixed number of
device slots (`max_loras`) hold the adapters the running batch uses; the model's LoRA layers
compute with whatever the slots hold (models/lora.py).

NOTE: slot invariants and scheduling policy:
- A running request pins its adapter's slot; a pinned slot is never evicted. Pins are taken
  when the scheduler admits a request (`acquire`) and released when it is preempted or
  finishes, so a slot changes hands only between steps, inside `schedule()`, while no forward
  is running: filling one is a host-to-device copy ordered before the next step's forward,
  and requests already running never see their adapter move or change.
- The scheduler admits an adapter request only if its adapter is in a slot or can get one now
  (a free slot, else the least recently used unpinned one). Otherwise the request waits, and
  so does every later adapter request (first come, first served among adapter requests), so
  that the slots' current users drain and the waiting adapter gets the next slot to free up:
  no adapter starves. Requests without an adapter need no slot and are admitted past them.
  Every pin belongs to a running request, which finishes or is preempted, so a waiting
  adapter always gets a slot eventually: no deadlock.
- An adapter can be unloaded only when no request (waiting or running) uses it; with
  `wait=True` it stops taking new requests and goes when its last request finishes (or, if
  every waiter withdraws, takes requests again).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from llmserve.errors import AlreadyExists, FailedPrecondition, NotFound, shown
from llmserve.reasons import Reason
from runtime_service.engine.lora.adapter import AdapterReader, LoRAAdapter
from runtime_service.engine.lora.slots import AdapterSlots
from runtime_service.engine.request import Request
from runtime_service.kernels.lora_batch import LoRABatch
from runtime_service.kernels.lora_tables import NO_ADAPTER, LoRAGraphTables
from runtime_service.models.lora import LoRASlots, attach_lora, prescaled_layers

if TYPE_CHECKING:
    from runtime_service.engine.scheduler import SchedulerOutput
    from runtime_service.models.llama import LlamaModel


def _own(t: torch.Tensor, pin: bool) -> torch.Tensor:
    """A host tensor this process owns: pinned for async copies to CUDA; out of shared
    memory (an adapter sent from another process arrives there, one file descriptor per
    tensor) into ordinary memory."""
    if pin:
        return t if t.is_pinned() else t.pin_memory()
    return t.clone() if t.is_shared() else t


class AdapterState(enum.Enum):
    HOST = "HOST"  # in host memory only
    DEVICE = "DEVICE"  # also in a device slot


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """What ListAdapters reports about one loaded adapter."""

    name: str
    path: str
    digest: str
    rank: int
    alpha: float
    scaling: float
    target_modules: tuple[str, ...]
    state: AdapterState
    slot: int | None
    num_requests: int  # unfinished requests naming it (waiting or running)
    num_running: int  # running requests (they pin its slot)
    host_bytes: int
    unloading: bool  # unload(wait=True) was asked; it goes when num_requests reaches 0


class LoRAManager:
    """Owns the adapters of one engine core; single-threaded, like the core."""

    def __init__(
        self,
        model: LlamaModel,
        max_loras: int,
        max_lora_rank: int,
        lora_dir: Path | None = None,
    ) -> None:
        self.device = model.device
        # A tensor-parallel rank's model has its share's shapes; adapters have the whole one's.
        whole = getattr(model, "full_config", model.config)
        self.reader = AdapterReader(
            whole, max_lora_rank, model.dtype, lora_dir, prescaled_layers(model)
        )
        self.slots = AdapterSlots(max_loras)
        attach = getattr(model, "attach_lora", None)  # tensor parallel: slots that shard
        self.device_slots = (
            attach(max_loras, max_lora_rank)
            if attach is not None
            else attach_lora(model, max_loras, max_lora_rank)
        )
        self.graph_tables: LoRAGraphTables | None = None  # see graph_inputs
        self.adapters: dict[str, LoRAAdapter] = {}
        self._requests: dict[str, set[str]] = {}  # adapter -> unfinished request ids
        self._unloading: dict[str, int] = {}  # adapter -> unload(wait=True) calls waiting

    def read(self, name: str, path: Path | str | None = None) -> LoRAAdapter:
        """Reads and validates an adapter (from lora_dir/<name> if path is None)."""
        return self.reader.read(name, path, pin_memory=self.device.type == "cuda")

    def is_loaded(self, name: str) -> bool:
        return name in self.adapters

    # The host tier.
    def register(self, adapter: LoRAAdapter, exist_ok: bool = False) -> AdapterInfo:
        """Adds a read adapter. Loading the same content under a loaded name is a no-op;
        other content under it raises AlreadyExists unless exist_ok (then the loaded one
        stays)."""
        existing = self.adapters.get(adapter.name)
        if adapter.name in self._unloading:
            raise FailedPrecondition(
                f"adapter {adapter.name!r} is being unloaded; load it again once it is gone",
                reason=Reason.ADAPTER_UNLOADING,
            )
        if existing is not None:
            if existing.digest != adapter.digest and not exist_ok:
                raise AlreadyExists(
                    f"adapter {adapter.name!r} is loaded with other weights ({existing.digest}); "
                    "unload it first",
                    reason=Reason.ADAPTER_CONFLICT,
                )
            return self.info(adapter.name)
        pin = self.device.type == "cuda"
        for weights in adapter.layers.values():  # read elsewhere (the frontend)?
            weights.a, weights.b = _own(weights.a, pin), _own(weights.b, pin)
        self.adapters[adapter.name] = adapter
        self._requests[adapter.name] = set()
        return self.info(adapter.name)

    def unload(self, name: str, wait: bool = False) -> bool:
        """Removes an adapter from both tiers. True: gone now. False (only with wait): it
        takes no new requests and goes when its last one finishes (is_loaded tells when).
        Without wait, an adapter still in use raises FailedPrecondition."""
        if name not in self.adapters:
            raise NotFound(f"adapter {shown(name)} is not loaded", reason=Reason.ADAPTER_NOT_FOUND)
        users = self._requests[name]
        if not users:
            self._remove(name)
            return True
        if not wait:
            raise FailedPrecondition(
                f"adapter {shown(name)} is in use by {len(users)} request(s); unload it when they "
                "finish, or unload with wait",
                reason=Reason.ADAPTER_IN_USE,
            )
        self._unloading[name] = self._unloading.get(name, 0) + 1
        return False

    def cancel_unload(self, name: str) -> None:
        """Withdraws one unload(wait=True) whose caller stopped waiting; when none is left,
        the adapter takes requests again."""
        waiting = self._unloading.get(name, 0)
        if waiting > 1:
            self._unloading[name] = waiting - 1
        else:
            self._unloading.pop(name, None)

    def _remove(self, name: str) -> None:
        slot = self.slots.drop(name)
        if slot is not None:
            self.device_slots.clear(slot)
        del self.adapters[name]
        del self._requests[name]
        self._unloading.pop(name, None)

    def info(self, name: str) -> AdapterInfo:
        adapter = self.adapters.get(name)
        if adapter is None:
            raise NotFound(f"adapter {shown(name)} is not loaded", reason=Reason.ADAPTER_NOT_FOUND)
        slot = self.slots.slot_of(name)
        return AdapterInfo(
            name=name,
            path=str(adapter.path),
            digest=adapter.digest,
            rank=adapter.rank,
            alpha=adapter.spec.alpha,
            scaling=adapter.spec.scaling,
            target_modules=adapter.target_modules,
            state=AdapterState.HOST if slot is None else AdapterState.DEVICE,
            slot=slot,
            num_requests=len(self._requests[name]),
            num_running=self.slots.num_pins(name),
            host_bytes=adapter.num_bytes,
            unloading=name in self._unloading,
        )

    def infos(self) -> list[AdapterInfo]:
        return [self.info(name) for name in sorted(self.adapters)]

    # Requests.
    def bind(self, req: Request) -> None:
        """Ties a new request to its adapter (read from lora_dir on first use if not loaded:
        NotFound if it is not there either): its prefix-cache key gets the adapter's digest,
        and the adapter cannot be unloaded under it."""
        name = req.adapter
        assert name is not None
        if name in self._unloading:
            raise FailedPrecondition(
                f"adapter {shown(name)} is being unloaded", reason=Reason.ADAPTER_UNLOADING
            )
        if name not in self.adapters:
            self.register(self.read(name), exist_ok=True)
        req.adapter_digest = self.adapters[name].digest
        self._requests[name].add(req.request_id)

    # Scheduler hooks (inside schedule()).
    def can_acquire(self, req: Request) -> bool:
        assert req.adapter is not None
        return self.slots.can_place(req.adapter)

    def acquire(self, req: Request) -> None:
        """Gives an admitted request its adapter's slot, copying the adapter in if needed."""
        name = req.adapter
        assert name is not None
        slot, _, copy = self.slots.place(name)
        if copy:
            self.device_slots.write(slot, self.adapters[name])
        self.slots.pin(name, req.request_id)

    def release(self, req: Request) -> None:
        """A preempted or finished request no longer pins its adapter's slot."""
        if req.adapter is not None:
            self.slots.unpin(req.adapter, req.request_id)

    def finish(self, req: Request) -> None:
        name = req.adapter
        if name is None or name not in self._requests:
            return
        self.release(req)
        users = self._requests[name]
        users.discard(req.request_id)
        if not users and name in self._unloading:
            self._remove(name)

    # The model runner.
    def graph_inputs(self, capacity: int) -> tuple[LoRASlots, LoRAGraphTables]:
        """What decode graphs with LoRA of up to `capacity` rows read: the slots and the
        fixed-address tables (kernels/lora_tables.py) that begin_batch fills for a graph
        step."""
        self.graph_tables = LoRAGraphTables(capacity, self.device_slots.num_slots, self.device)
        return self.device_slots, self.graph_tables

    def begin_batch(self, sched: SchedulerOutput, graph_size: int | None = None) -> bool:
        """Tells the LoRA layers which of this step's tokens use which slot; True when any
        token uses an adapter. With `graph_size` (the step replays the decode graph of that
        many rows) the tables go to the graph's buffers instead of an eager LoRABatch."""
        slots = []
        for req in sched.requests:
            slot = None if req.adapter is None else self.slots.slot_of(req.adapter)
            if req.adapter is not None and slot is None:
                raise RuntimeError(f"{req} runs with adapter {req.adapter!r} in no slot")
            slots.append(slot)
        if graph_size is not None:
            self.device_slots.batch = None  # a replay does not call the layers
            if not any(s is not None for s in slots):
                return False
            assert self.graph_tables is not None, "a LoRA graph step without graph tables"
            self.graph_tables.fill(
                np.asarray(sched.num_scheduled_tokens, dtype=np.int64),
                np.array([NO_ADAPTER if s is None else s for s in slots], dtype=np.int64),
                graph_size,
            )
            return True
        self.device_slots.batch = LoRABatch.build(sched.num_scheduled_tokens, slots, self.device)
        return self.device_slots.batch is not None

    @property
    def num_loads(self) -> int:
        return self.slots.num_loads

    @property
    def num_evictions(self) -> int:
        return self.slots.num_evictions

    @property
    def num_bound_requests(self) -> int:
        return sum(len(users) for users in self._requests.values())
