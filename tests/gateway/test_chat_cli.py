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
from tests.gateway.gateway_harness import MODEL, Client, start_gateway

GREEDY = ("--temperature", "0", "--max-tokens", "16")


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    runtimes: list[DaemonProcess],
) -> Iterator[tuple[DaemonProcess, dict[str, str]]]:
    gw, keys = start_gateway(tmp_path_factory.mktemp("cli"), redis_server, runtimes)
    try:
        yield gw, keys
    finally:
        gw.terminate()


def chat_command(address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "llmserve", "chat", "--gateway", address, *args]


def env_with_key(key: str) -> dict[str, str]:
    return {**os.environ, "LLMSERVE_API_KEY": key}


def test_create_chat_history_then_resume(gateway: tuple[DaemonProcess, dict[str, str]]) -> None:
    gw, keys = gateway
    out = subprocess.run(
        chat_command(gw.address, "--system-prompt", "Be brief.", *GREEDY),
        input="What is the capital of France?\n\nAnd of Italy?\n/history\n/session\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=env_with_key(keys["alice"]),
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("session ") and lines[0].endswith(f"created: model {MODEL}")
    session_id = lines[0].split()[1]
    first, second = lines[1:3]  # one line each: short answers
    assert "Paris" in first and "Rome" in second  # turn 2 saw turn 1
    assert lines[3:] == [
        "[system] Be brief.",
        "[user] What is the capital of France?",
        f"[assistant] {first}",
        "[user] And of Italy?",
        f"[assistant] {second}",
        session_id,
    ]
    resumed = subprocess.run(
        chat_command(gw.address, "--session", session_id, *GREEDY),
        input="And of Spain?\n/quit\nnever sent\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=env_with_key(keys["alice"]),
    )
    assert resumed.returncode == 0, resumed.stderr
    opened, *reply = resumed.stdout.splitlines()
    assert opened == f"session {session_id} resumed (4 messages): model {MODEL}"
    alice = Client(gw.address, keys["alice"])
    assert alice.messages(session_id)[-2:] == [
        ("user", "And of Spain?"),
        ("assistant", "\n".join(reply)),
    ]


def test_reply_is_printed_as_it_streams(gateway: tuple[DaemonProcess, dict[str, str]]) -> None:
    gw, keys = gateway
    proc = subprocess.Popen(
        chat_command(gw.address, "--temperature", "0", "--max-tokens", "48"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env_with_key(keys["bob"]),
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("Tell me a story about a dragon.\n")
    proc.stdin.close()
    opened = proc.stdout.readline()
    assert opened.startswith("session ")
    sent = time.monotonic()
    reply = proc.stdout.read(1)
    first_text = time.monotonic()
    reply += proc.stdout.read()  # to the end: the client exits after the reply
    done = time.monotonic()
    assert proc.wait(30) == 0
    # The text came out over most of the reply's time, not all at once at the end.
    assert done - first_text > 0.5 * (done - sent)
    bob = Client(gw.address, keys["bob"])
    assert bob.messages(opened.split()[1])[1] == ("assistant", reply.removesuffix("\n"))
    assert len(bob.get(opened.split()[1]).messages[1].content) > 100


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
    assert (
        "[error] INVALID_ARGUMENT: runtime: max_tokens (100000) must be below max_model_len (2048)"
        in big.stderr
    )
    assert big.stderr.count("[error]") == 2  # the client went on to the second line
