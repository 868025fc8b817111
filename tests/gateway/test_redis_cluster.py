"""The gateway's keys on a real three-node Redis Cluster (redis-server --cluster-enabled)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from gateway.auth import ApiKeys
from gateway.ratelimit import RateLimiter
from gateway.records import Message, Reply
from gateway.redis_store import RedisStore, SessionKeys
from gateway.sessions import SessionStore, Turn
from llmserve import errors
from llmserve.processes import DaemonProcess, RedisServer, free_port
from tests.gateway.gateway_harness import Client, run, start_gateway


@dataclass
class Cluster:
    url: str
    data_dir: Path  # the harness keeps the API keys file here, as for a RedisServer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port not in ports and port + 10000 < 65536:
            ports.append(port)
    procs = []
    for port in ports:
        (tmp / str(port)).mkdir()
        procs.append(
            subprocess.Popen(
                [
                    "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--dir", str(tmp / str(port)), "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no",
                ],
                stdout=subprocess.DEVNULL,
            )
        )  # fmt: skip
    try:
        for port in ports:
            wait_for(lambda p=port: cli(p, "ping") == "PONG")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for port in ports:
            wait_for(lambda p=port: "cluster_state:ok" in cli(p, "cluster", "info"))
        yield Cluster(f"redis://127.0.0.1:{ports[0]}/0", tmp)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def cli(port: int, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    )
    return out.stdout.strip()


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "redis cluster did not come up"
        time.sleep(0.1)


def test_sessions_keys_and_rate_limits_on_a_cluster(cluster: Cluster, tmp_path: Path) -> None:
    async def body() -> None:
        redis = RedisStore(cluster.url, timeout_s=2, retries=2, cluster=True)
        store = SessionStore(redis, lock_ttl_ms=5000, max_turns=10)
        owner = "owner-" + uuid.uuid4().hex[:6]
        ids = [(await store.create(owner, "m", "", "sys", 60_000)).session_id for _ in range(12)]
        for sid in ids:
            turn = await store.begin_turn(owner, sid, "req")
            assert isinstance(turn, Turn)
            with pytest.raises(errors.Aborted, match="session busy"):
                await store.begin_turn(owner, sid, "other")
            await store.commit_turn(
                turn, Message("user", "q"), Message("assistant", "a"), Reply("a"), "rt"
            )
            assert await store.begin_turn(owner, sid, "req") == Reply("a")  # replayed
        # The sessions are spread over the nodes, each session's keys on one node.
        nodes = set()
        for sid in ids:
            owners = {redis.client.get_node_from_key(k).name for k in SessionKeys.of(sid).all()}  # type: ignore[attr-defined]
            assert len(owners) == 1
            nodes |= owners
        assert len(nodes) >= 2  # 12 random ids all on one of 3 nodes: p < 1e-5
        page, token = await store.list(owner, page_size=5)
        rest, last = await store.list(owner, page_size=20, page_token=token)
        assert {s.session_id for s in (*page, *rest)} == set(ids) and last == ""
        assert (await store.get(owner, ids[0])).messages == (
            Message("user", "q"),
            Message("assistant", "a"),
        )
        await store.delete(owner, ids[0])
        with pytest.raises(errors.NotFound):
            await store.get(owner, ids[0])
        keys_file = tmp_path / "keys"
        keys_file.write_text("alice:" + "k" * 20 + "\n")
        keys = ApiKeys(redis, keys_file)
        assert await keys.sync() == 1
        assert (await keys.authenticate([("authorization", "Bearer " + "k" * 20)])).owner == "alice"
        limiter = RateLimiter(redis, rate=1, burst=1)
        await limiter.check("a" * 64)
        with pytest.raises(errors.ResourceExhausted):
            await limiter.check("a" * 64)
        await redis.close()

    run(body)


def test_gateway_process_on_a_cluster(
    cluster: Cluster, tmp_path: Path, runtimes: list[DaemonProcess]
) -> None:
    gateway, keys = start_gateway(tmp_path, cast(RedisServer, cluster), runtimes, "--redis-cluster")
    try:
        alice = Client(gateway.address, keys["alice"])
        sid = alice.create().session_id
        one, two = alice.chat(sid, "one"), alice.chat(sid, "two")
        assert alice.messages(sid) == [
            ("user", "one"),
            ("assistant", one.text),
            ("user", "two"),
            ("assistant", two.text),
        ]
        assert alice.list().sessions[0].session_id == sid
    finally:
        gateway.terminate()
