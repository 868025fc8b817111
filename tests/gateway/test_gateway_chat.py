"""The gateway as a real process, with a real redis-server and two runtime daemons serving
SmolLM2: chat, sessions, keys, inputs, stateless generation."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmserve.processes import DaemonProcess, RedisServer
from llmserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.gateway.gateway_harness import (
    MAX_MODEL_LEN,
    MODEL,
    Client,
    greedy,
    runtime_status,
    start_gateway,
    wait_idle,
)

MAX_MESSAGE_BYTES = 4096
LONG_REPLY = greedy(48, ignore_eos=True)  # a few seconds of streaming on a CPU


@dataclass
class Stack:
    gateway: DaemonProcess
    runtimes: list[DaemonProcess]
    keys: dict[str, str]

    def client(self, owner: str | None = "alice") -> Client:
        return Client(self.gateway.address, self.keys[owner] if owner else None)

    def runtime(self, address: str) -> DaemonProcess:
        return next(r for r in self.runtimes if r.address == address)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    runtimes: list[DaemonProcess],
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("chat")
    gateway, keys = start_gateway(
        tmp, redis_server, runtimes, "--max-chat-message-bytes", str(MAX_MESSAGE_BYTES)
    )
    try:
        yield Stack(gateway, runtimes, keys)
    finally:
        gateway.terminate()


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        result = call()  # type: ignore[operator]
        if hasattr(result, "__iter__"):
            list(result)
    return err.value.code(), err.value.details()


def test_multi_turn_chat_sees_history_and_reuses_the_pinned_prefix(stack: Stack) -> None:
    alice = stack.client()
    session = alice.create(system_prompt="Be brief.")
    sid = session.session_id
    first = alice.chat(sid, "What is the capital of France?", sampling=greedy(16))
    assert "Paris" in first.text
    assert first.last.finish_reason == common_pb2.FINISH_REASON_STOP
    assert len(first.chunks) > 1  # streamed, not one message
    pinned = alice.get(sid).runtime
    assert pinned in {r.address for r in stack.runtimes}
    hits_before = runtime_status(stack.runtime(pinned)).kv_cache.prefix_cache_hits
    second = alice.chat(sid, "And of Italy?", sampling=greedy(16))
    # Turn 2 saw turn 1: asked alone (below), the question gets no such answer.
    assert "Rome" in second.text
    # Same runtime, and the start of turn 2's prompt (turn 1) came out of its prefix cache.
    assert alice.get(sid).runtime == pinned
    usage = second.last.usage
    assert 0 < usage.cached_prompt_tokens < usage.prompt_tokens
    hits = runtime_status(stack.runtime(pinned)).kv_cache.prefix_cache_hits
    assert hits >= hits_before + usage.cached_prompt_tokens
    assert alice.messages(sid) == [
        ("user", "What is the capital of France?"),
        ("assistant", first.text),
        ("user", "And of Italy?"),
        ("assistant", second.text),
    ]
    stored = alice.get(sid)
    assert stored.system_prompt == "Be brief."
    assert stored.messages[1].token_count == first.last.usage.completion_tokens
    alone = alice.create(system_prompt="Be brief.").session_id
    assert "Rome" not in alice.chat(alone, "And of Italy?", sampling=greedy(16)).text


def test_twenty_sessions_chat_concurrently(stack: Stack) -> None:
    alice = stack.client()
    sessions = [alice.create().session_id for _ in range(20)]
    replies: dict[tuple[int, int], str] = {}

    def message(i: int, turn: int) -> str:
        return f"Session {i}, message {turn}: hello!"

    def converse(i: int) -> None:
        for turn in range(1, 4):
            replies[i, turn] = alice.chat(sessions[i], message(i, turn)).text

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(converse, range(20)))
    for i, sid in enumerate(sessions):
        expected = []
        for turn in range(1, 4):
            expected += [("user", message(i, turn)), ("assistant", replies[i, turn])]
        assert alice.messages(sid) == expected
    # Both runtimes took sessions.
    assert len({alice.get(sid).runtime for sid in sessions}) == 2


def test_second_concurrent_chat_on_a_session_is_aborted(stack: Stack) -> None:
    alice = stack.client()
    sid = alice.create().session_id
    first = alice.chat_call(sid, "Tell me a story about a dragon.", sampling=LONG_REPLY)
    started = threading.Event()
    texts: list[str] = []

    def read() -> None:
        for chunk in first:
            started.set()
            texts.append(chunk.text)

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(60)
    code, details = code_of(lambda: alice.chat(sid, "interleave?"))
    reader.join(60)
    assert code == grpc.StatusCode.ABORTED and "session busy" in details
    assert len(texts) > 1
    assert alice.messages(sid) == [
        ("user", "Tell me a story about a dragon."),
        ("assistant", "".join(texts)),
    ]
    alice.chat(sid, "Thanks!")  # the lock went with the first turn


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
    one = alice.chat(sid, "Hello!")
    call = alice.chat_call(sid, "Tell me a long story.", sampling=greedy(1000, ignore_eos=True))
    next(call)  # the reply has started
    call.cancel()
    # The gateway cancels the runtime's stream at once (the reply had a minute to go).
    wait_idle(stack.runtimes, within_s=2.0)
    assert alice.messages(sid) == [("user", "Hello!"), ("assistant", one.text)]
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
            # The runtime's refusals, with their codes and messages.
            lambda: alice.chat(sid, "1" * 4000),  # 4,000 tokens in 4,000 bytes
            grpc.StatusCode.INVALID_ARGUMENT,
            "runtime: prompt.chat: the last message alone renders to",
        ),
        (
            lambda: alice.chat(sid, "hi", sampling=greedy(10_000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "runtime: max_tokens (10000) must be below max_model_len (2048)",
        ),
    ]
    for call, code, message in cases:
        got_code, details = code_of(call)
        assert (got_code, message in details) == (code, True), details
    assert alice.messages(sid) == []  # none of that touched the session


def test_stateless_generate_and_list_models(stack: Stack) -> None:
    alice = stack.client()
    request = gateway_pb2.GatewayGenerateRequest(
        model=MODEL,
        prompt=common_pb2.Prompt(text="The capital of France is"),
        sampling=greedy(6, ignore_eos=True),
        request_id="gen-1",
    )
    chunks = list(alice.stub.Generate(request, metadata=alice.metadata, timeout=60))
    assert len(chunks) > 1 and {c.request_id for c in chunks} == {"gen-1"}
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 6
    request.final_only = True
    (only,) = alice.stub.Generate(request, metadata=alice.metadata, timeout=60)
    # Greedy: the one final chunk holds what was streamed.
    assert only.text == "".join(c.text for c in chunks)
    assert list(only.token_ids) == [t for c in chunks for t in c.token_ids]
    (model,) = alice.stub.ListModels(
        gateway_pb2.ListModelsRequest(), metadata=alice.metadata, timeout=10
    ).models
    assert (model.name, model.num_healthy_runtimes, model.max_model_len) == (
        MODEL,
        2,
        MAX_MODEL_LEN,
    )
    engine_ids = {runtime_status(r).engine.engine_id for r in stack.runtimes} - {""}
    assert list(model.engine_ids) == sorted(engine_ids)


def test_a_slow_caller_gets_every_token_once_in_fewer_chunks(stack: Stack) -> None:
    """A caller that reads nothing more until the runtime has finished (its HTTP/2 window is
    small, so the gateway cannot send far ahead of it) gets what a fast caller gets: the same
    tokens and logprobs in order, the same text, finish reason and usage, in fewer chunks than
    tokens (the chunks that waited at the gateway went out merged)."""
    alice = stack.client()
    request = gateway_pb2.GatewayGenerateRequest(
        model=MODEL,
        prompt=common_pb2.Prompt(text="Count from one to a hundred."),
        sampling=greedy(96, ignore_eos=True, logprobs=1),
    )
    fast = list(alice.stub.Generate(request, metadata=alice.metadata, timeout=120))
    small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1)]
    with grpc.insecure_channel(stack.gateway.address, options=small_window) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Generate(
            request, metadata=alice.metadata, timeout=120
        )
        first = next(call)
        wait_idle(stack.runtimes, within_s=120)  # every later token is at the gateway now
        slow = [first, *call]

    def reply(chunks: list[Any]) -> tuple[Any, ...]:
        return (
            [t for c in chunks for t in c.token_ids],
            [lp for c in chunks for lp in c.logprobs],
            "".join(c.text for c in chunks),
            len({c.request_id for c in chunks}),
            any(c.finish_reason for c in chunks[:-1]),
            chunks[-1].finish_reason,
            chunks[-1].usage,
        )

    assert reply(slow) == reply(fast)
    assert len(reply(fast)[0]) == 96 and len(reply(fast)[1]) == 96
    assert len(slow) < 96, [len(c.token_ids) for c in slow]


def test_the_callers_deadline_reaches_the_runtime(stack: Stack) -> None:
    """With the gateway frozen (SIGSTOP) only the runtime itself can end the request: it does
    at the caller's deadline, which the gateway passed on."""
    alice = stack.client()
    request = gateway_pb2.GatewayGenerateRequest(
        model=MODEL,
        prompt=common_pb2.Prompt(text="Count to a thousand."),
        sampling=greedy(2000, ignore_eos=True),  # minutes on a CPU
    )
    call = alice.stub.Generate(request, metadata=alice.metadata, timeout=4)
    next(call)  # running
    assert stack.gateway.proc is not None
    stack.gateway.proc.send_signal(signal.SIGSTOP)
    try:
        wait_idle(stack.runtimes, within_s=6)  # the 4 s deadline, and some slack
    finally:
        stack.gateway.proc.send_signal(signal.SIGCONT)
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_another_gateway_replica_sees_the_same_sessions_and_pins(
    stack: Stack, tmp_path: Path, redis_server: RedisServer
) -> None:
    """All state is in Redis: a second gateway process sees the session, history and pin,
    and routes the session's next turn to the same runtime."""
    alice = stack.client()
    sid = alice.create().session_id
    alice.chat(sid, "Remember me.")
    pinned = alice.get(sid).runtime
    other, keys = start_gateway(tmp_path, redis_server, stack.runtimes)
    try:
        replica = Client(other.address, keys["alice"])
        assert replica.messages(sid) == alice.messages(sid)
        second = replica.chat(sid, "Again.")
        assert second.last.usage.cached_prompt_tokens > 0
        assert alice.get(sid).runtime == pinned
        assert [m for _, m in alice.messages(sid)][2:] == ["Again.", second.text]
    finally:
        other.terminate()
