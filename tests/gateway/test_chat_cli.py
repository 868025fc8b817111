"""`llmserve chat` driven through a pipe against a real gateway: create, stream, resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmserve.processes import DaemonProcess, RedisServer
from tests.gateway.gateway_harness import MODEL, reply_to, start_gateway, start_runtimes

TOKEN_DELAY_S = 0.01


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[tuple[DaemonProcess, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("cli")
    (runtime,) = start_runtimes(tmp, 1, "--token-delay-s", str(TOKEN_DELAY_S))
    try:
        gw, keys = start_gateway(tmp, redis_server, [runtime])
        try:
            yield gw, keys
        finally:
            gw.terminate()
    finally:
        runtime.terminate()


def chat_command(address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "llmserve", "chat", "--gateway", address, *args]


def env_with_key(key: str) -> dict[str, str]:
    return {**os.environ, "LLMSERVE_API_KEY": key}


def test_create_chat_history_then_resume(gateway: tuple[DaemonProcess, dict[str, str]]) -> None:
    gw, keys = gateway
    out = subprocess.run(
        chat_command(gw.address, "--system-prompt", "Be brief."),
        input="hello there\n\nhow are you\n/history\n/session\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env_with_key(keys["alice"]),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("session ") and lines[0].endswith(f"created: model {MODEL}")
    session_id = lines[0].split()[1]
    assert lines[1:] == [
        reply_to("hello there", 1, 2),
        reply_to("how are you", 2, 4),
        "[system] Be brief.",
        "[user] hello there",
        f"[assistant] {reply_to('hello there', 1, 2)}",
        "[user] how are you",
        f"[assistant] {reply_to('how are you', 2, 4)}",
        session_id,
    ]
    resumed = subprocess.run(
        chat_command(gw.address, "--session", session_id),
        input="and now?\n/quit\nnever sent\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env_with_key(keys["alice"]),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines() == [
        f"session {session_id} resumed (4 messages): model {MODEL}",
        reply_to("and now?", 3, 6),
    ]


def test_reply_is_printed_as_it_streams(gateway: tuple[DaemonProcess, dict[str, str]]) -> None:
    gw, keys = gateway
    words = 100  # ~1 s of streaming at TOKEN_DELAY_S a word
    proc = subprocess.Popen(
        chat_command(gw.address),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env_with_key(keys["bob"]),
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(" ".join(["w"] * words) + "\n")
    proc.stdin.close()
    assert proc.stdout.readline().startswith("session ")
    assert proc.stdout.read(4) == "turn"
    first_text = time.monotonic()
    rest = proc.stdout.readline()
    streamed_for = time.monotonic() - first_text
    assert proc.wait(30) == 0
    assert rest.endswith(" w\n") and rest.count(" w") == words
    assert streamed_for > words * TOKEN_DELAY_S / 2


def test_errors_are_reported(gateway: tuple[DaemonProcess, dict[str, str]], tmp_path: Path) -> None:
    gw, keys = gateway
    missing = subprocess.run(
        chat_command(gw.address, "--session", "0" * 32),
        input="hi\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env_with_key(keys["alice"]),
    )
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    no_key = subprocess.run(
        chat_command(gw.address),
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "LLMSERVE_API_KEY"},
    )
    assert no_key.returncode == 2 and "api_key is required" in no_key.stderr
    big = subprocess.run(
        chat_command(gw.address, "--max-tokens", "100000"),
        input="too many tokens asked\nsecond line still works\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env_with_key(keys["alice"]),
    )
    assert big.returncode == 0
    assert "[error] INVALID_ARGUMENT: runtime: prompt is" in big.stderr
