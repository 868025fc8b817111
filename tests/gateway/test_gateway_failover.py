"""Runtimes failing under the gateway: killed while pinned, refusing before the first token,
dying after it. Each test has its own runtimes (it breaks them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from llmserve.processes import DaemonProcess, RedisServer
from tests.gateway.gateway_harness import Client, api_keys, reply_to, start_gateway, start_runtimes

Stack = tuple[DaemonProcess, list[DaemonProcess], Client]


@pytest.fixture
def make_stack(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Stack]]:
    """make_stack(runtime_flags, ...) -> (gateway, runtimes, alice's client): one runtime per
    list of flags."""
    procs: list[DaemonProcess] = []

    def make(*flags: list[str]) -> Stack:
        runtimes = [
            start_runtimes(tmp_path, 1, *extra, name=f"runtime{i}-")[0]
            for i, extra in enumerate(flags)
        ]
        procs.extend(runtimes)
        gateway, keys = start_gateway(tmp_path, redis_server, runtimes)
        procs.append(gateway)
        return gateway, runtimes, Client(gateway.address, keys["alice"])

    try:
        yield make
    finally:
        for proc in reversed(procs):
            proc.kill() if proc.module != "gateway" else proc.terminate()


def test_killing_the_pinned_runtime_moves_the_session_with_its_history(
    make_stack: Callable[..., Stack],
) -> None:
    _, runtimes, alice = make_stack([], [])
    sid = alice.create(system_prompt="Be brief.").session_id
    alice.chat(sid, "first question")
    pinned = alice.get(sid).runtime
    victim = next(r for r in runtimes if r.address == pinned)
    survivor = next(r for r in runtimes if r.address != pinned)
    victim.kill()  # SIGKILL: no drain; the gateway still believes it healthy
    second = alice.chat(sid, "second question")
    # The other runtime got the whole history: system + turn 1 + the new message.
    assert second.text == reply_to("second question", 2, 4)
    session = alice.get(sid)
    assert session.runtime == survivor.address
    assert [m.content for m in session.messages] == [
        "first question",
        reply_to("first question", 1, 2),
        "second question",
        second.text,
    ]


def test_runtime_refusing_before_the_first_token_is_retried_on_another(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    # The refusing runtime reports the lower load, so it is chosen first every time.
    _, (refusing, healthy), alice = make_stack(
        ["--fail-first", "1000"], ["--reported-waiting", "5"]
    )
    for i in range(3):
        sid = alice.create().session_id
        result = alice.chat(sid, f"hello {i}")
        assert result.text == reply_to(f"hello {i}", 1, 1)
        assert alice.get(sid).runtime == healthy.address
    log = next(tmp_path.glob("gateway-*.log")).read_text()
    assert f"runtime {refusing.address} failed before the first token" in log


def test_runtime_dying_after_the_first_token_leaves_the_session_unchanged(
    make_stack: Callable[..., Stack],
) -> None:
    _, (dying, healthy), alice = make_stack(
        ["--die-after-chunks", "3", "--token-delay-s", "0.01"], ["--reported-waiting", "5"]
    )
    sid = alice.create().session_id
    received: list[str] = []
    with pytest.raises(grpc.RpcError) as err:
        for chunk in alice.chat_call(sid, "tell me a long story please"):
            received.append(chunk.text)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "failed after the reply had started" in err.value.details()
    assert "the session is unchanged" in err.value.details()
    assert received  # the client had seen the start of the reply
    session = alice.get(sid)
    assert list(session.messages) == [] and session.runtime == ""
    # Not busy, and the same turn again goes to the other runtime.
    again = alice.chat(sid, "tell me a long story please")
    assert again.text == reply_to("tell me a long story please", 1, 1)
    assert alice.get(sid).runtime == healthy.address
    assert dying.proc is not None and dying.proc.poll() is not None


def test_runtimes_found_by_dns(tmp_path: Path, redis_server: RedisServer) -> None:
    """--runtime-dns NAME:PORT (the chart's headless Service): "localhost" resolves to the
    stand-in on 127.0.0.1 (and perhaps ::1, where nothing listens: unhealthy, not routed to)."""
    (runtime,) = start_runtimes(tmp_path, 1)
    keys_file, keys = api_keys(redis_server)
    gateway = DaemonProcess(
        "gateway",
        [
            "--redis", redis_server.url, "--api-keys-file", str(keys_file),
            "--runtime-dns", f"localhost:{runtime.port}", "--log-format", "text",
        ],
        log_path=tmp_path / "gateway.log",
    ).start()  # fmt: skip
    try:
        gateway.wait_serving()
        alice = Client(gateway.address, keys["alice"])
        sid = alice.create().session_id
        assert alice.chat(sid, "found you").text == reply_to("found you", 1, 1)
        assert alice.get(sid).runtime == f"127.0.0.1:{runtime.port}"
    finally:
        gateway.terminate()
        runtime.terminate()
