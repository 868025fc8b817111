"""The routing policy (no network): pinning, least load, adapters, exclusions, models."""

from __future__ import annotations

import random

from gateway.discovery import DnsDiscovery, StaticDiscovery
from gateway.routing import RuntimeState, choose_runtime, models_of
from tests.gateway.gateway_harness import run


def rt(address: str, **kw: object) -> RuntimeState:
    defaults: dict[str, object] = {"healthy": True, "model": "m"}
    return RuntimeState(address, **{**defaults, **kw})  # type: ignore[arg-type]


def pick(runtimes: list[RuntimeState], **kw: object) -> str | None:
    chosen = choose_runtime(runtimes, kw.pop("model", "m"), rng=random.Random(0), **kw)  # type: ignore[arg-type]
    return None if chosen is None else chosen.address


def test_pinned_runtime_wins_while_it_is_available() -> None:
    runtimes = [rt("a", num_running=9), rt("b")]
    assert pick(runtimes, pinned="a") == "a"
    runtimes[0].healthy = False
    assert pick(runtimes, pinned="a") == "b"
    runtimes[0].healthy, runtimes[0].draining = True, True
    assert pick(runtimes, pinned="a") == "b"
    assert pick(runtimes, pinned="a", exclude={"b"}) is None
    assert pick([rt("a"), rt("b")], pinned="a", exclude={"a"}) == "b"


def test_least_loaded_then_least_kv_usage() -> None:
    runtimes = [
        rt("a", num_running=4),
        rt("b", num_running=1, num_waiting=1),
        rt("c", num_running=3),
    ]
    assert pick(runtimes) == "b"
    runtimes[1].num_sent_since_status = 5  # this gateway sent it work since its last status
    assert pick(runtimes) == "c"
    tied = [rt("a", num_running=1, kv_usage=0.8), rt("b", num_running=1, kv_usage=0.3)]
    assert pick(tied) == "b"


def test_ties_are_broken_at_random() -> None:
    runtimes = [rt("a"), rt("b"), rt("c")]
    chosen = {choose_runtime(runtimes, "m").address for _ in range(200)}  # type: ignore[union-attr]
    assert chosen == {"a", "b", "c"}


def test_only_runtimes_of_the_model_and_with_the_adapter() -> None:
    runtimes = [rt("a", model="other"), rt("b", adapters=("x",), num_running=5), rt("c")]
    assert pick(runtimes, model="nope") is None
    assert pick(runtimes) == "c"
    assert pick(runtimes, adapter="x") == "b"
    # No runtime holds the adapter: any runtime of the model (it will answer NOT_FOUND).
    assert pick(runtimes, adapter="y") == "c"


def test_models_group_runtimes() -> None:
    runtimes = [
        rt("a", engine_id="e1", max_model_len=100, adapters=("x",)),
        rt("b", engine_id="e2", max_model_len=200, adapters=("y",), healthy=False),
        rt("c", model="n", engine_id="e3"),
        RuntimeState("d"),  # never answered: no model
    ]
    (m, n) = models_of(runtimes)
    assert (m.name, m.engine_ids, m.max_model_len, m.num_healthy_runtimes, m.adapters) == (
        "m", ["e1", "e2"], 200, 1, ["x", "y"],
    )  # fmt: skip
    assert (n.name, n.num_healthy_runtimes) == ("n", 1)


def test_discovery() -> None:
    async def body() -> None:
        assert await StaticDiscovery(["b:1", "a:2", "b:1"]).addresses() == ["a:2", "b:1"]
        assert await DnsDiscovery("localhost:7").addresses() in (
            ["127.0.0.1:7"], ["127.0.0.1:7", "[::1]:7"], ["[::1]:7"],
        )  # fmt: skip
        missing = DnsDiscovery("no-such-host.invalid:7")
        assert await missing.addresses() == []

    run(body)
