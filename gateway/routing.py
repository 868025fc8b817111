"""Which runtime serves a request: the routing policy, apart from any network code.

A runtime is a candidate for a request when it is healthy, not draining, serves the model,
has not failed this request already, and (for a request with an adapter) holds the adapter,
if any candidate does. Among candidates:
1. the session's pinned runtime, while it is one (its KV cache holds the session's prefix);
2. otherwise the least loaded: fewest requests (running + waiting, as last reported, plus
   those this gateway sent since), then the smallest fraction of KV blocks in use, then at
   random, so replicas do not all pick the same one.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class RuntimeState:
    """What the gateway knows of one runtime, from its health check and GetStatus."""

    address: str
    healthy: bool = False
    draining: bool = False
    model: str = ""
    engine_id: str = ""
    max_model_len: int = 0
    adapters: tuple[str, ...] = ()
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0  # fraction of KV blocks held by requests, in [0, 1]
    num_in_flight: int = 0  # this gateway's calls open on it right now
    num_sent_since_status: int = 0  # calls this gateway started since the last GetStatus
    last_error: str = ""

    @property
    def load(self) -> int:
        return self.num_running + self.num_waiting + self.num_sent_since_status

    @property
    def available(self) -> bool:
        return self.healthy and not self.draining


def choose_runtime(
    runtimes: Iterable[RuntimeState],
    model: str,
    *,
    adapter: str = "",
    pinned: str = "",
    exclude: Collection[str] = (),
    rng: random.Random | None = None,
) -> RuntimeState | None:
    """The runtime to send a request to (see the module docstring), or None."""
    candidates = [
        r for r in runtimes if r.available and r.model == model and r.address not in exclude
    ]
    if adapter:
        with_adapter = [r for r in candidates if adapter in r.adapters]
        candidates = with_adapter or candidates
    if not candidates:
        return None
    for r in candidates:
        if r.address == pinned:
            return r
    rng = rng or random
    return min(candidates, key=lambda r: (r.load, round(r.kv_usage, 2), rng.random()))


@dataclass(slots=True)
class ModelInfo:
    """A model and the runtimes serving it (for ListModels)."""

    name: str
    engine_ids: list[str] = field(default_factory=list)
    max_model_len: int = 0
    num_healthy_runtimes: int = 0
    adapters: list[str] = field(default_factory=list)


def models_of(runtimes: Iterable[RuntimeState]) -> list[ModelInfo]:
    """Models of every runtime that ever reported one, by name."""
    models: dict[str, ModelInfo] = {}
    for r in runtimes:
        if not r.model:
            continue
        info = models.setdefault(r.model, ModelInfo(r.model))
        if r.engine_id and r.engine_id not in info.engine_ids:
            info.engine_ids.append(r.engine_id)
        info.max_model_len = max(info.max_model_len, r.max_model_len)
        info.num_healthy_runtimes += int(r.available)
        info.adapters = sorted(set(info.adapters) | set(r.adapters))
    for info in models.values():
        info.engine_ids.sort()
    return sorted(models.values(), key=lambda m: m.name)
