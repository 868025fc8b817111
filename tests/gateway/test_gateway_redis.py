"""Redis going away under the gateway: UNAVAILABLE with a clear message, nothing
half-written, no completed turn lost across a crash and restart (AOF, fsync always)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from llmserve.processes import DaemonProcess, RedisServer, free_port
from llmserve.testing.metrics import scrape, value
from tests.gateway.gateway_harness import Client, greedy, start_gateway

LOCK_TTL_S = 1.0


@dataclass
class Stack:
    redis: RedisServer
    gateway: DaemonProcess
    alice: Client

    def crash_redis(self) -> None:
        assert self.redis.proc is not None
        self.redis.proc.kill()  # SIGKILL: no shutdown, no final save
        self.redis.proc.wait()

    def restart_redis(self) -> None:
        self.redis = RedisServer(self.redis.data_dir, port=self.redis.port).start()


@pytest.fixture
def stack(tmp_path: Path, runtimes: list[DaemonProcess]) -> Iterator[Stack]:
    redis = RedisServer(tmp_path / "redis").start()
    gateway, keys = start_gateway(
        tmp_path,
        redis,
        runtimes[:1],
        *("--session-lock-ttl-s", str(LOCK_TTL_S), "--metrics-port", str(free_port())),
    )
    s = Stack(redis, gateway, Client(gateway.address, keys["alice"]))
    try:
        yield s
    finally:
        gateway.terminate()
        s.redis.stop()


def expect_unavailable(call: object, redis: RedisServer) -> str:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        result = call()  # type: ignore[operator]
        if hasattr(result, "__iter__"):
            list(result)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert f"Redis at 127.0.0.1:{redis.port} is unreachable" in err.value.details()
    assert time.monotonic() - started < 10
    return err.value.details()


def test_redis_down_is_unavailable_and_the_gateway_recovers(stack: Stack) -> None:
    alice = stack.alice
    sid = alice.create().session_id
    before = alice.chat(sid, "before")
    stack.redis.stop()
    for call in (
        lambda: alice.create(),
        lambda: alice.get(sid),
        lambda: alice.list(),
        lambda: alice.chat(sid, "during"),
    ):
        expect_unavailable(call, stack.redis)
    gw = stack.gateway
    port = int(gw.args[gw.args.index("--metrics-port") + 1])
    assert value(scrape(port), "llmserve_gateway_redis_errors_total") >= 4  # one per call
    stack.restart_redis()
    assert alice.messages(sid) == [("user", "before"), ("assistant", before.text)]
    alice.chat(sid, "after")
    assert len(alice.messages(sid)) == 4


def test_redis_crash_during_a_turn_writes_nothing_half(stack: Stack) -> None:
    alice = stack.alice
    sid = alice.create().session_id
    kept = alice.chat(sid, "kept")
    # A reply of a few seconds on a CPU.
    call = alice.chat_call(sid, "Tell me a long story.", sampling=greedy(48, ignore_eos=True))
    next(call)
    stack.crash_redis()
    with pytest.raises(grpc.RpcError) as err:
        list(call)  # the reply completes, but cannot be stored
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "could not be stored" in err.value.details()
    stack.restart_redis()
    session = alice.get(sid)
    assert [m.content for m in session.messages] == ["kept", kept.text]
    assert session.runtime  # the pin of the stored turn
    # The interrupted turn's lock survived in the AOF; it expires within the lock TTL.
    deadline = time.monotonic() + LOCK_TTL_S + 5
    while True:
        try:
            alice.chat(sid, "next")
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.ABORTED and time.monotonic() < deadline
            time.sleep(0.1)
    assert len(alice.messages(sid)) == 4


def test_redis_crash_and_restart_loses_no_completed_turn(stack: Stack) -> None:
    alice = stack.alice
    sessions = [alice.create().session_id for _ in range(5)]
    done: dict[str, list[tuple[str, str]]] = {}

    def converse(sid: str) -> None:
        turns = []
        for turn in range(1, 4):
            message = f"Hello {sid[:6]}, turn {turn}."
            turns += [("user", message), ("assistant", alice.chat(sid, message).text)]
        done[sid] = turns  # each Chat completed: its turn is stored

    with ThreadPoolExecutor(5) as pool:
        list(pool.map(converse, sessions))
    stack.crash_redis()
    stack.restart_redis()
    for sid in sessions:
        assert alice.messages(sid) == done[sid]
    listed = {s.session_id for s in alice.list().sessions}
    assert set(sessions) <= listed
