"""The gateway as a real process, with a real redis-server and two runtimes (the stand-in
until the runtime daemon lands): chat, sessions, keys, inputs, stateless generation."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from llmserve.processes import DaemonProcess, RedisServer
from llmserve.v1 import common_pb2, gateway_pb2, runtime_pb2, runtime_pb2_grpc
from tests.gateway.gateway_harness import MODEL, Client, reply_to, start_gateway, start_runtimes

MAX_MESSAGE_BYTES = 4096


@dataclass
class Stack:
    gateway: DaemonProcess
    runtimes: list[DaemonProcess]
    keys: dict[str, str]

    def client(self, owner: str | None = "alice") -> Client:
        return Client(self.gateway.address, self.keys[owner] if owner else None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("chat")
    runtimes = start_runtimes(tmp, 2, "--token-delay-s", "0.002", "--max-model-len", "4096")
    try:
        gateway, keys = start_gateway(
            tmp, redis_server, runtimes, "--max-chat-message-bytes", str(MAX_MESSAGE_BYTES)
        )
        try:
            yield Stack(gateway, runtimes, keys)
        finally:
            gateway.terminate()
    finally:
        for runtime in runtimes:
            runtime.terminate()


def runtime_status(runtime: DaemonProcess) -> runtime_pb2.GetStatusResponse:
    with grpc.insecure_channel(runtime.address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        return stub.GetStatus(runtime_pb2.GetStatusRequest(), timeout=5)


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        result = call()  # type: ignore[operator]
        if hasattr(result, "__iter__"):
            list(result)
    return err.value.code(), err.value.details()


def test_multi_turn_chat_sees_history_and_reuses_the_pinned_prefix(stack: Stack) -> None:
    alice = stack.client()
    session = alice.create(system_prompt="You are terse.")
    first = alice.chat(session.session_id, "What is the capital of France?")
    # system + user: the runtime got the system prompt and the message.
    assert first.text == reply_to("What is the capital of France?", 1, 2)
    assert first.last.finish_reason == common_pb2.FINISH_REASON_STOP
    assert len(first.chunks) > 1  # streamed, not one message
    pinned = alice.get(session.session_id).runtime
    assert pinned in {r.address for r in stack.runtimes}
    second = alice.chat(session.session_id, "And of Italy?")
    assert second.text == reply_to("And of Italy?", 2, 4)  # turn 2 saw turn 1
    # Same runtime, and turn 1's prompt came out of its prefix cache.
    assert alice.get(session.session_id).runtime == pinned
    usage = second.last.usage
    assert 0 < usage.cached_prompt_tokens < usage.prompt_tokens
    assert alice.messages(session.session_id) == [
        ("user", "What is the capital of France?"),
        ("assistant", first.text),
        ("user", "And of Italy?"),
        ("assistant", second.text),
    ]
    stored = alice.get(session.session_id)
    assert stored.system_prompt == "You are terse."
    assert stored.messages[1].token_count == first.last.usage.completion_tokens


def test_twenty_sessions_chat_concurrently(stack: Stack) -> None:
    alice = stack.client()
    sessions = [alice.create().session_id for _ in range(20)]

    def converse(i: int) -> None:
        for turn in range(1, 4):
            alice.chat(sessions[i], f"session {i} turn {turn}")

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(converse, range(20)))
    for i, sid in enumerate(sessions):
        expected = []
        for turn in range(1, 4):
            message = f"session {i} turn {turn}"
            expected += [("user", message), ("assistant", reply_to(message, turn, 2 * turn - 1))]
        assert alice.messages(sid) == expected
    # Both runtimes took sessions.
    assert len({alice.get(sid).runtime for sid in sessions}) == 2


def test_second_concurrent_chat_on_a_session_is_aborted(stack: Stack) -> None:
    alice = stack.client()
    sid = alice.create().session_id
    long_message = " ".join(["word"] * 300)  # ~0.6 s at 2 ms a word
    first = alice.chat_call(sid, long_message)
    started = threading.Event()
    texts: list[str] = []

    def read() -> None:
        for chunk in first:
            started.set()
            texts.append(chunk.text)

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(10)
    code, details = code_of(lambda: alice.chat(sid, "interleave?"))
    reader.join(30)
    assert code == grpc.StatusCode.ABORTED and "session busy" in details
    assert alice.messages(sid) == [("user", long_message), ("assistant", "".join(texts))]
    alice.chat(sid, "now it is free")  # the lock went with the first turn


def test_retried_request_id_is_replayed_not_appended(stack: Stack) -> None:
    alice = stack.client()
    sid = alice.create().session_id
    first = alice.chat(sid, "hello", request_id="req-42")
    again = alice.chat(sid, "hello", request_id="req-42")
    assert len(again.chunks) == 1 and again.last.replayed and not first.last.replayed
    assert again.text == first.text
    assert list(again.last.token_ids) == [t for c in first.chunks for t in c.token_ids]
    assert again.last.usage == first.last.usage
    assert len(alice.messages(sid)) == 2


def test_cancelled_chat_leaves_the_session_as_it_was(stack: Stack) -> None:
    alice = stack.client()
    sid = alice.create().session_id
    alice.chat(sid, "one")
    call = alice.chat_call(sid, " ".join(["slow"] * 800))  # a reply of 1.6 s
    next(call)  # the reply has started
    call.cancel()
    cancelled = time.monotonic()
    # The gateway cancels the runtime's stream at once.
    while sum(runtime_status(r).num_running for r in stack.runtimes) > 0:
        assert time.monotonic() - cancelled < 1.0
        time.sleep(0.02)
    before = alice.get(sid)
    assert [m.content for m in before.messages] == ["one", reply_to("one", 1, 1)]
    # The lock was released at once: the next turn is not busy (retry briefly: the gateway
    # learns of the cancel asynchronously).
    for _ in range(50):
        try:
            alice.chat(sid, "two")
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.ABORTED
            threading.Event().wait(0.05)
    assert len(alice.messages(sid)) == 4


def test_keys_cannot_see_each_others_sessions(stack: Stack) -> None:
    alice, bob = stack.client("alice"), stack.client("bob")
    sid = alice.create().session_id
    alice.chat(sid, "mine")
    for call in (
        lambda: bob.get(sid),
        lambda: bob.chat(sid, "let me in"),
        lambda: bob.delete(sid),
    ):
        code, details = code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and sid in details
    assert sid not in {s.session_id for s in bob.list().sessions}
    assert sid in {s.session_id for s in alice.list().sessions}
    assert len(alice.messages(sid)) == 2  # untouched by bob
    alice.delete(sid)
    assert code_of(lambda: alice.get(sid))[0] == grpc.StatusCode.NOT_FOUND


def test_list_sessions_pages_most_recent_first(stack: Stack) -> None:
    carol = stack.client("carol")
    ids = [carol.create().session_id for _ in range(3)]
    carol.chat(ids[0], "bump")
    first = carol.list(page_size=2)
    second = carol.list(page_size=2, page_token=first.next_page_token)
    listed = [s.session_id for s in (*first.sessions, *second.sessions)]
    assert listed[:3] == [ids[0], ids[2], ids[1]] and not second.next_page_token
    assert all(not s.messages for s in first.sessions)


def test_bad_inputs_get_precise_codes(stack: Stack) -> None:
    alice = stack.client()
    sid = alice.create().session_id
    big = "x" * (MAX_MESSAGE_BYTES + 1)
    cases = [
        (lambda: alice.chat(uuid.uuid4().hex, "hi"), grpc.StatusCode.NOT_FOUND, "no such session"),
        (
            lambda: alice.chat(sid, ""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "message must not be empty",
        ),
        (
            lambda: alice.chat(sid, "  \n"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "message must not be empty",
        ),
        (
            lambda: alice.chat(sid, big),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"message is {MAX_MESSAGE_BYTES + 1} bytes, more than the limit of {MAX_MESSAGE_BYTES}",
        ),
        (
            lambda: alice.create(system_prompt=big),
            grpc.StatusCode.INVALID_ARGUMENT,
            "system_prompt is",
        ),
        (
            lambda: alice.create(model="gpt-17"),
            grpc.StatusCode.NOT_FOUND,
            f"model 'gpt-17' is not served by any runtime; models served: '{MODEL}'",
        ),
        (lambda: alice.create(model=""), grpc.StatusCode.INVALID_ARGUMENT, "model is required"),
        (
            lambda: alice.create(adapter="nope"),
            grpc.StatusCode.NOT_FOUND,
            "adapter 'nope' is not loaded",
        ),
        (lambda: alice.create(ttl_ns=5), grpc.StatusCode.INVALID_ARGUMENT, "ttl_ns must be in"),
        (
            lambda: alice.chat(sid, "hi", request_id="r" * 129),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request_id is 129 characters, more than the limit of 128",
        ),
        (
            lambda: alice.list(page_size=5000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_size must be in [0, 1000]",
        ),
        (lambda: stack.client(None).create(), grpc.StatusCode.UNAUTHENTICATED, "missing API key"),
        (
            lambda: Client(stack.gateway.address, "wrong-key-123456789").create(),
            grpc.StatusCode.UNAUTHENTICATED,
            "unknown API key",
        ),
        (
            lambda: alice.chat(sid, "hi", sampling=common_pb2.SamplingParams(max_tokens=10_000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "runtime: prompt is",
        ),
    ]
    for call, code, message in cases:
        got_code, details = code_of(call)
        assert (got_code, message in details) == (code, True), details
    assert alice.messages(sid) == []  # none of that touched the session


def test_stateless_generate_and_list_models(stack: Stack) -> None:
    alice = stack.client()
    request = gateway_pb2.GatewayGenerateRequest(
        model=MODEL, prompt=common_pb2.Prompt(text="a b c"), request_id="gen-1"
    )
    chunks = list(alice.stub.Generate(request, metadata=alice.metadata, timeout=10))
    assert "".join(c.text for c in chunks) == "echo: a b c" and len(chunks) == 4
    assert {c.request_id for c in chunks} == {"gen-1"}
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    request.final_only = True
    (only,) = alice.stub.Generate(request, metadata=alice.metadata, timeout=10)
    assert only.usage.completion_tokens == 4
    # The caller's deadline reaches the runtime (less the time spent on the way).
    request = gateway_pb2.GatewayGenerateRequest(
        model=MODEL, prompt=common_pb2.Prompt(text="?deadline")
    )
    chunks = list(alice.stub.Generate(request, metadata=alice.metadata, timeout=7))
    # gRPC sends timeouts with coarse units, rounded up: allow a second either way.
    assert "".join(c.text for c in chunks) in ("deadline 6", "deadline 7", "deadline 8")
    chunks = list(alice.stub.Generate(request, metadata=alice.metadata))
    assert "".join(c.text for c in chunks) == "deadline none"
    (model,) = alice.stub.ListModels(
        gateway_pb2.ListModelsRequest(), metadata=alice.metadata, timeout=10
    ).models
    assert (model.name, model.num_healthy_runtimes, model.max_model_len) == (MODEL, 2, 4096)
    assert list(model.engine_ids) == ["standin-engine"]


def test_another_gateway_replica_sees_the_same_sessions_and_pins(
    stack: Stack, tmp_path: Path, redis_server: RedisServer
) -> None:
    """All state is in Redis: a second gateway process sees the session, history and pin,
    and routes the session's next turn to the same runtime."""
    alice = stack.client()
    sid = alice.create().session_id
    alice.chat(sid, "remember me")
    pinned = alice.get(sid).runtime
    other, keys = start_gateway(tmp_path, redis_server, stack.runtimes)
    try:
        replica = Client(other.address, keys["alice"])
        assert replica.messages(sid) == alice.messages(sid)
        second = replica.chat(sid, "again")
        assert second.text == reply_to("again", 2, 3)
        assert second.last.usage.cached_prompt_tokens > 0
        assert alice.get(sid).runtime == pinned
    finally:
        other.terminate()
