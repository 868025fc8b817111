"""The gateway on a bad day (issue 12), against real processes: a burst larger than the Redis
pool, Redis frozen while a reply is being stored, a runtime frozen mid-stream behind TLS and a
service token, two owners using one request id, Redis restarted empty, key guessing, and
hostile session ids and page tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from llmserve.processes import DaemonProcess, RedisServer
from llmserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, runtime_pb2, runtime_pb2_grpc
from tests.gateway.gateway_harness import (
    MODEL,
    Client,
    api_keys,
    greedy,
    runtime_args,
    start_gateway,
    wait_idle,
)
from tests.gateway.test_gateway_tls import issue

WAIT_S = 120.0  # failure guard of the waits below (never a pace)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (it is frozen, flushed, or holds auth buckets)."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()


def locks(server: RedisServer) -> list[str]:
    client = redis.Redis(port=server.port, decode_responses=True)
    return list(client.scan_iter("llmserve:*:lock"))


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def test_burst_larger_than_the_redis_pool_queues_and_loses_nothing(
    tmp_path: Path, own_redis: RedisServer, runtimes: list[DaemonProcess]
) -> None:
    """24 concurrent Chats through 2 Redis connections: every one completes and is stored,
    and no session is left busy (redis-py's pool used to refuse beyond its size)."""
    gateway, keys = start_gateway(
        tmp_path, own_redis, runtimes, "--redis-max-connections", "2",
        "--redis-pool-timeout-s", str(WAIT_S),
    )  # fmt: skip
    client = Client(gateway.address, keys["alice"])
    sessions = [client.create().session_id for _ in range(24)]

    async def chat_all() -> list[int]:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)

            async def chat(session_id: str) -> int:
                request = gateway_pb2.ChatRequest(
                    session_id=session_id, message="Hi!", sampling=greedy(2)
                )
                call = stub.Chat(request, metadata=client.metadata, timeout=WAIT_S)
                return sum([1 async for c in call if c.finish_reason])

            return await asyncio.gather(*(chat(s) for s in sessions))

    try:
        assert asyncio.run(chat_all()) == [1] * len(sessions)
        for session_id in sessions:
            assert [role for role, _ in client.messages(session_id)] == ["user", "assistant"]
        assert locks(own_redis) == []
    finally:
        client.close()
        gateway.terminate()


def test_reply_generated_while_redis_is_frozen_is_stored_when_it_is_back(
    tmp_path: Path, own_redis: RedisServer, runtimes: list[DaemonProcess]
) -> None:
    """Redis stops answering while the reply streams: the commit keeps retrying, and once
    Redis is back the final chunk arrives and the turn is in the session (it used to end
    UNAVAILABLE with the reply lost)."""
    gateway, keys = start_gateway(tmp_path, own_redis, runtimes)
    client = Client(gateway.address, keys["alice"])
    session_id = client.create().session_id
    log = gateway.log_path
    assert own_redis.proc is not None and log is not None
    try:
        call = client.chat_call(session_id, "Tell me about harbors.", sampling=greedy(48))
        first = next(call)
        own_redis.proc.send_signal(signal.SIGSTOP)
        wait_idle(runtimes, within_s=WAIT_S)  # the reply is generated: it is being stored
        wait_for(lambda: "unreachable" in log.read_text(), "a failed Redis call")
        own_redis.proc.send_signal(signal.SIGCONT)
        rest = list(call)
        assert rest[-1].finish_reason
        text = first.text + "".join(c.text for c in rest)
        assert client.messages(session_id) == [
            ("user", "Tell me about harbors."),
            ("assistant", text),
        ]
        assert locks(own_redis) == []
    finally:
        client.close()
        gateway.terminate()


def test_tls_token_runtime_frozen_mid_stream_and_request_ids_per_owner(
    tmp_path: Path, redis_server: RedisServer, smollm2_dir: Path
) -> None:
    """A runtime serving TLS and requiring a service token: the gateway reaches it (TLS +
    token), a caller without the token is refused; two owners may use one request id at
    once; frozen (SIGSTOP) mid-stream, the Chat ends UNAVAILABLE within the idle timeout
    and the session is free again."""
    ca = issue(tmp_path, "ca", None)
    issue(tmp_path, "runtime", ca)
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(16))
    tls = ["--tls-cert", str(tmp_path / "runtime.crt"), "--tls-key", str(tmp_path / "runtime.key")]
    runtime = DaemonProcess(
        "runtime_service",
        runtime_args(smollm2_dir, *tls, "--service-token-file", str(token)),
        log_path=tmp_path / "runtime.log",
    )
    credentials = grpc.ssl_channel_credentials((tmp_path / "ca.crt").read_bytes())
    runtime.start().wait_serving(timeout=300, credentials=credentials)
    gateway, keys = start_gateway(
        tmp_path, redis_server, [runtime], "--runtime-tls-ca", str(tmp_path / "ca.crt"),
        "--runtime-token-file", str(token), "--runtime-idle-timeout-s", "3",
        "--runtime-keepalive-s", "0",
    )  # fmt: skip
    alice, bob = Client(gateway.address, keys["alice"]), Client(gateway.address, keys["bob"])
    others: list[Any] = [None, None]  # the second gateway and its client, once started
    try:
        with grpc.secure_channel(runtime.address, credentials) as channel:
            with pytest.raises(grpc.RpcError) as err:
                runtime_pb2_grpc.RuntimeStub(channel).GetStatus(
                    runtime_pb2.GetStatusRequest(), timeout=10
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # One request id, two owners, both in flight on the one runtime.
        prompt = common_pb2.Prompt(text="Count to fifty.")

        def generate(client: Client, max_tokens: int) -> object:
            request = gateway_pb2.GatewayGenerateRequest(
                model=MODEL, prompt=prompt, sampling=greedy(max_tokens, ignore_eos=True),
                request_id="shared-id",
            )  # fmt: skip
            return client.stub.Generate(request, metadata=client.metadata, timeout=WAIT_S)

        long = generate(alice, 64)
        next(long)  # alice's request runs
        assert sum(len(c.token_ids) for c in generate(bob, 3)) == 3
        long.cancel()
        # Frozen mid-stream.
        session_id = alice.create().session_id
        call = alice.chat_call(session_id, "Hello!", sampling=greedy(200, ignore_eos=True))
        next(call)
        assert runtime.proc is not None
        runtime.proc.send_signal(signal.SIGSTOP)
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no response for 3 s" in err.value.details()
        runtime.proc.send_signal(signal.SIGCONT)
        assert alice.messages(session_id) == []
        assert locks(redis_server) == []
        # However long the idle timeout, HTTP/2 pings tell a frozen runtime from a busy one.
        pinging, _ = others[0] = start_gateway(
            tmp_path, redis_server, [runtime], "--runtime-tls-ca", str(tmp_path / "ca.crt"),
            "--runtime-token-file", str(token), "--runtime-idle-timeout-s", "600",
            "--runtime-keepalive-s", "1", "--runtime-timeout-s", "2",
        )  # fmt: skip
        carol = others[1] = Client(pinging.address, keys["carol"])
        call = carol.chat_call(
            carol.create().session_id, "Hi!", sampling=greedy(200, ignore_eos=True)
        )
        next(call)
        runtime.proc.send_signal(signal.SIGSTOP)
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "ping timeout" in err.value.details()
        runtime.proc.send_signal(signal.SIGCONT)
    finally:
        alice.close()
        bob.close()
        if others[1] is not None:
            others[1].close()
        if others[0] is not None:
            others[0][0].terminate()
        if runtime.proc is not None:
            runtime.proc.send_signal(signal.SIGCONT)
        gateway.terminate()
        runtime.kill()


def test_keys_known_again_after_redis_lost_them_and_guessing_is_limited(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    gateway, keys = start_gateway(
        tmp_path, own_redis, [], "--api-keys-miss-sync-s", "3600",
        "--auth-failure-rps", "0.001", "--auth-failure-burst", "3",
    )  # fmt: skip
    keys_file, _ = api_keys(own_redis)
    alice = Client(gateway.address, keys["alice"])
    try:
        redis.Redis(port=own_redis.port).flushall()  # Redis restarted empty
        alice.stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=alice.metadata)
        # The file is re-read at most once per api_keys_miss_sync_s: a key added now is not
        # known yet (the miss above used the one re-read of this interval).
        new_key = "dave-" + secrets.token_hex(12)
        keys_file.write_text(keys_file.read_text() + f"dave:{new_key}\n")
        codes = []
        for key in (new_key, "x" * 20, "y" * 20, "z" * 20, keys["bob"]):
            try:
                Client(gateway.address, key).stub.ListModels(
                    gateway_pb2.ListModelsRequest(), metadata=Client(gateway.address, key).metadata
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        # Three failures empty this address's bucket: a fourth call, even with a valid key,
        # is refused before its key is looked at.
        unauthenticated, exhausted = (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert codes == [unauthenticated] * 3 + [exhausted, exhausted]
    finally:
        alice.close()
        gateway.terminate()


def token(value: object) -> str:
    raw = json.dumps(value).encode() if not isinstance(value, bytes) else value
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        ("list:" + token([float("nan"), "x"]), "INVALID_ARGUMENT", "page_token is not"),
        ("list:" + token(b"[" * 100_000), "INVALID_ARGUMENT", "page_token is not"),
        ("list:" + token([1.0, "0" * 32, 3]), "INVALID_ARGUMENT", "page_token is not"),
        ("get:" + "s" * 100_000, "NOT_FOUND", "(100000 characters)"),
        ("chat:" + "r" * 100_000, "INVALID_ARGUMENT", "request_id is 100000 characters"),
    ],
)
def test_hostile_ids_and_page_tokens(
    tmp_path: Path, redis_server: RedisServer, call: str, code: str, message: str
) -> None:
    gateway, keys = start_gateway(tmp_path, redis_server, [])
    client = Client(gateway.address, keys["carol"])
    kind, _, value = call.partition(":")
    try:
        with pytest.raises(grpc.RpcError) as err:
            if kind == "list":
                client.list(page_token=value)
            elif kind == "get":
                client.get(value)
            else:
                list(client.chat_call("0" * 32, "hi", request_id=value))
        assert err.value.code().name == code
        assert message in err.value.details()
        assert len(err.value.details()) < 1000
    finally:
        client.close()
        gateway.terminate()
