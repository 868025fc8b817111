"""The `llmserve` command line: every command's --help (parsed: one default at most, the
environment variable last), --version, settings whose names mean one thing across commands,
and the metrics listener binding where --host says unless --metrics-host sets it apart."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmserve import __version__
from llmserve.cli import COMMANDS, main
from llmserve.config import env_name
from llmserve.processes import REPO_ROOT, DaemonProcess, free_port
from llmserve.server.config import ServerConfig

# The settings dataclass of each command.
CONFIGS = {
    "builder": ("builder_service.config", "BuilderConfig"),
    "runtime": ("runtime_service.config", "RuntimeConfig"),
    "gateway": ("gateway.config", "GatewayConfig"),
    "chat": ("gateway.chat_cli", "ChatConfig"),
    "check": ("gateway.check_cli", "CheckConfig"),
    "build": ("builder_service.cli", "BuildCommandConfig"),
    "up": ("llmserve.up", "UpConfig"),
}
# Settings that several commands share, with the same meaning, worded for each command.
SAME_MEANING = {
    "adapter",  # the LoRA adapter of the chat (chat, up)
    "dtype",  # the weights' dtype (runtime --model-path, build)
    "http_port",  # the gateway's OpenAI HTTP port (gateway, up)
    "manifest_signing_key_file",  # the HMAC key of manifests (verify: runtime; sign: builder)
    "max_lora_rank",  # the highest LoRA rank accepted (runtime, builder)
    "max_model_len",  # the engine's longest sequence (runtime, build)
    "model_name",  # the model's name in the store (runtime selects, build names)
    "quantization",  # the engine's quantization (runtime selects, build makes)
}


def run_cli(*argv: str) -> tuple[int, str]:
    """(exit status, stdout) of `llmserve argv...`, in process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            status = main(list(argv))
        except SystemExit as e:
            status = int(e.code or 0)
    return status, out.getvalue()


def options(help_text: str) -> dict[str, str]:
    """Each option and positional argument of a --help text (by its flag, or its name for a
    positional one) with its help, whitespace collapsed."""
    parsed = {}
    for section in re.split(r"\n(?:positional arguments|options):\n", help_text)[1:]:
        for entry in re.split(r"\n(?=  \S)", section):
            words = " ".join(entry.split())
            parsed[words.split()[0].rstrip(",")] = words
    return parsed


def fields(command: str) -> dict[str, dataclasses.Field]:  # type: ignore[type-arg]
    module, name = CONFIGS[command]
    cls = getattr(importlib.import_module(module), name)
    return {f.name: f for f in dataclasses.fields(cls)}


def test_every_command_has_a_config() -> None:
    assert set(CONFIGS) == set(COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_names_each_default_once_and_the_environment(command: str) -> None:
    status, text = run_cli(command, "--help")
    assert status == 0
    parsed = options(text)
    assert "--version" in parsed
    for name in fields(command):
        flag = "--" + name.replace("_", "-")
        names = (flag, name.upper(), f"{flag}/--no-{flag[2:]}")
        entry = next(v for k, v in parsed.items() if k in names)
        assert entry.count("default") <= 1, entry
        assert "(default: None" not in entry and "(default: ;" not in entry, entry
        assert entry.endswith(f"env {env_name(name)})"), entry


@pytest.mark.parametrize("command", list(COMMANDS))
def test_version(command: str) -> None:
    assert run_cli(command, "--version") == (0, f"llmserve {command} {__version__}\n")


def test_version_of_the_command_line_matches_the_package() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert f'\nversion = "{__version__}"\n' in pyproject
    out = subprocess.run(
        [sys.executable, "-m", "llmserve", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout == f"llmserve {__version__}\n"


def test_a_setting_name_means_one_thing_across_commands() -> None:
    """A name (flag and LLMSERVE_* variable) shared by commands has one help text, unless it
    is listed in SAME_MEANING; `model` (a path for runtime, a name for chat) and `tls_cert`
    (served certificate, or chat's client certificate) were not."""
    helps: dict[str, dict[str, str]] = {}
    for command in COMMANDS:
        for name, f in fields(command).items():
            helps.setdefault(name, {})[command] = f.metadata["help"]
    for name, by_command in helps.items():
        if len(by_command) > 1 and name not in SAME_MEANING:
            assert len(set(by_command.values())) == 1, (name, by_command)
    assert set(helps["model"]) == {"chat"} and set(helps["model_path"]) == {"runtime"}
    assert "chat" not in helps["tls_cert"] and "chat" in helps["gateway_tls_cert"]
    assert set(helps["gateway_tls_ca"]) == {"chat", "check"}


def test_metrics_address_follows_host_unless_set() -> None:
    assert ServerConfig(host="127.0.0.1").metrics_address == "127.0.0.1"
    assert ServerConfig(host="[::1]").metrics_address == "::1"
    assert ServerConfig(host="127.0.0.1", metrics_host="0.0.0.0").metrics_address == "0.0.0.0"


def _connects(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex((host, port)) == 0


@pytest.mark.parametrize(("metrics_host", "on_other_loopback"), [("", False), ("0.0.0.0", True)])
def test_metrics_listener_binds_to_host(
    tmp_path: Path, metrics_host: str, on_other_loopback: bool
) -> None:
    """A gateway started with --host 127.0.0.1 (Redis unreachable: it serves anyway): its
    metrics answer on 127.0.0.1 and, only when --metrics-host 0.0.0.0 sets them apart, on
    127.0.0.2 (another loopback address, reachable only through a wildcard bind)."""
    port = free_port()
    extra = ["--metrics-host", metrics_host] if metrics_host else []
    args = ["--redis", "redis://127.0.0.1:1/0", "--metrics-port", str(port), *extra]
    gateway = DaemonProcess("gateway", args, log_path=tmp_path / "gateway.log").start()
    try:
        gateway.wait_serving()
        assert _connects("127.0.0.1", port)
        assert _connects("127.0.0.2", port) == on_other_loopback
    finally:
        gateway.terminate()
