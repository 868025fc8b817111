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
  `wait=True` it stops taking new requests and goes when its last request finishes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmserve.errors import AlreadyExists, FailedPrecondition, NotFound
from runtime_service.engine.lora.adapter import (
    CONFIG_FILE,
    LoRAAdapter,
    check_adapter_name,
    read_adapter,
)
from runtime_service.engine.lora.slots import AdapterSlots
from runtime_service.engine.request import Request
from runtime_service.kernels.lora_torch import LoRABatch
from runtime_service.models.lora import attach_lora

if TYPE_CHECKING:
    from runtime_service.engine.scheduler import SchedulerOutput
    from runtime_service.models.llama import LlamaModel


def _nothing() -> None:
    pass


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
    """Owns the adapters of one engine. All methods but `read`, `find` and `check` run on
    the engine thread; those three touch no state and may run anywhere."""

    def __init__(
        self,
        model: LlamaModel,
        max_loras: int,
        max_lora_rank: int,
        lora_dir: Path | None = None,
    ) -> None:
        self.model_config = model.config
        self.dtype = model.dtype
        self.device = model.device
        self.max_lora_rank = max_lora_rank
        self.lora_dir = lora_dir
        self.slots = AdapterSlots(max_loras)
        self.device_slots = attach_lora(model, max_loras, max_lora_rank)
        self.adapters: dict[str, LoRAAdapter] = {}
        self._requests: dict[str, set[str]] = {}  # adapter -> unfinished request ids
        self._unloading: dict[str, list[Callable[[], None]]] = {}  # adapter -> callbacks

    # Reading adapters (any thread).
    def read(self, name: str, path: Path) -> LoRAAdapter:
        """Reads and validates an adapter for this model (slow: disk; no engine state)."""
        return read_adapter(
            name,
            path,
            self.model_config,
            self.max_lora_rank,
            self.dtype,
            pin_memory=self.device.type == "cuda",
        )

    def find(self, name: str) -> Path | None:
        """The adapter's directory under `lora_dir` (loading on first use), if there is one."""
        if self.lora_dir is None:
            return None
        check_adapter_name(name)
        path = self.lora_dir / name
        return path if (path / CONFIG_FILE).is_file() else None

    def check(self, name: str) -> None:
        """Raises unless a request may name `name`: NotFound if it is neither loaded nor
        loadable on first use, FailedPrecondition while it is being unloaded."""
        if name in self._unloading:
            raise FailedPrecondition(f"adapter {name!r} is being unloaded")
        if name not in self.adapters and self.find(name) is None:
            where = f" (nor in lora_dir {self.lora_dir})" if self.lora_dir else ""
            raise NotFound(f"adapter {name!r} is not loaded{where}")

    def needs_loading(self, name: str) -> bool:
        return name not in self.adapters and self.find(name) is not None

    # The host tier (engine thread).
    def register(self, adapter: LoRAAdapter, exist_ok: bool = False) -> AdapterInfo:
        """Adds a read adapter. Loading the same content under a loaded name is a no-op;
        other content under it raises AlreadyExists unless exist_ok (then the loaded one
        stays)."""
        existing = self.adapters.get(adapter.name)
        if existing is not None:
            if existing.digest != adapter.digest and not exist_ok:
                raise AlreadyExists(
                    f"adapter {adapter.name!r} is loaded with other weights ({existing.digest}); "
                    "unload it first"
                )
            return self.info(adapter.name)
        self.adapters[adapter.name] = adapter
        self._requests[adapter.name] = set()
        return self.info(adapter.name)

    def load(self, name: str, path: Path) -> AdapterInfo:
        return self.register(self.read(name, path))

    def unload(
        self, name: str, wait: bool = False, on_unloaded: Callable[[], None] | None = None
    ) -> bool:
        """Removes an adapter from both tiers. True: gone now. False (only with wait): it
        takes no new requests and goes, calling on_unloaded, when its last one finishes.
        Without wait, an adapter still in use raises FailedPrecondition."""
        if name not in self.adapters:
            raise NotFound(f"adapter {name!r} is not loaded")
        users = self._requests[name]
        if not users:
            self._remove(name)
            if on_unloaded is not None:
                on_unloaded()
            return True
        if not wait:
            raise FailedPrecondition(
                f"adapter {name!r} is in use by {len(users)} request(s); unload it when they "
                "finish, or unload with wait"
            )
        self._unloading.setdefault(name, []).append(on_unloaded or _nothing)
        return False

    def cancel_unload(self, name: str, on_unloaded: Callable[[], None]) -> None:
        """Withdraws one unload(wait=True) that passed on_unloaded (its caller stopped
        waiting); when none is left, the adapter takes requests again."""
        callbacks = self._unloading.get(name)
        if callbacks is None or on_unloaded not in callbacks:
            return
        callbacks.remove(on_unloaded)
        if not callbacks:
            del self._unloading[name]

    def _remove(self, name: str) -> None:
        slot = self.slots.drop(name)
        if slot is not None:
            self.device_slots.clear(slot)
        del self.adapters[name]
        del self._requests[name]
        for callback in self._unloading.pop(name, []):
            callback()

    def info(self, name: str) -> AdapterInfo:
        adapter = self.adapters.get(name)
        if adapter is None:
            raise NotFound(f"adapter {name!r} is not loaded")
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

    # Requests (engine thread).
    def bind(self, req: Request) -> None:
        """Ties a new request to its adapter (loading it from lora_dir on first use): its
        prefix-cache key gets the adapter's digest, and the adapter cannot be unloaded under
        it."""
        name = req.adapter
        assert name is not None
        self.check(name)
        if name not in self.adapters:
            path = self.find(name)
            assert path is not None
            self.register(self.read(name, path), exist_ok=True)
        req.adapter_digest = self.adapters[name].digest
        self._requests[name].add(req.request_id)

    # Scheduler hooks (engine thread, inside schedule()).
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
    def begin_batch(self, sched: SchedulerOutput) -> None:
        """Tells the LoRA layers which of this step's tokens use which slot."""
        slots = []
        for req in sched.requests:
            slot = None if req.adapter is None else self.slots.slot_of(req.adapter)
            if req.adapter is not None and slot is None:
                raise RuntimeError(f"{req} runs with adapter {req.adapter!r} in no slot")
            slots.append(slot)
        self.device_slots.batch = LoRABatch.build(sched.num_scheduled_tokens, slots, self.device)

    @property
    def num_loads(self) -> int:
        return self.slots.num_loads

    @property
    def num_evictions(self) -> int:
        return self.slots.num_evictions

    @property
    def num_bound_requests(self) -> int:
        return sum(len(users) for users in self._requests.values())
