from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from llmserve.config import parse_config, require, setting
from llmserve.server import ServerConfig


@dataclass(kw_only=True)
class Example:
    name: str = setting("a", "a name")
    count: int = setting(3, "a count")
    ratio: float = setting(0.5, "a ratio")
    enabled: bool = setting(False, "a switch")
    path: Path | None = setting(None, "a path")
    items: list[str] = setting(["x"], "a list")

    def __post_init__(self) -> None:
        require(self.count >= 0, f"count must be >= 0, got {self.count}")


def test_defaults_env_and_flags_in_order_of_precedence() -> None:
    assert parse_config(Example, [], env={}) == Example()
    env = {"LLMSERVE_COUNT": "7", "LLMSERVE_ENABLED": "yes", "LLMSERVE_ITEMS": "p, q"}
    from_env = parse_config(Example, [], env=env)
    assert (from_env.count, from_env.enabled, from_env.items) == (7, True, ["p", "q"])
    flags = ["--count", "9", "--no-enabled", "--path", "/tmp/x", "--ratio", "0.25"]
    from_flags = parse_config(Example, flags, env=env)
    assert from_flags.count == 9
    assert from_flags.enabled is False
    assert from_flags.path == Path("/tmp/x")
    assert from_flags.ratio == 0.25
    assert from_flags.items == ["p", "q"]  # still from the environment


def test_validation_error_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(Example, ["--count", "-1"], env={})
    assert exc.value.code == 2
    assert "count must be >= 0, got -1" in capsys.readouterr().err


def test_malformed_environment_value_names_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_config(Example, [], env={"LLMSERVE_COUNT": "many"})
    assert "LLMSERVE_COUNT" in capsys.readouterr().err


def test_server_config_limits(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_config(ServerConfig, ["--port", "0"], env={}).port == 0
    for flags, message in [
        (["--port", "70000"], "port must be in [0, 65535]"),
        (["--tls-cert", "c.pem"], "tls_cert and tls_key must be given together"),
        (["--log-level", "loud"], "log_level must be one of"),
        (["--max-message-bytes", "10"], "max_message_bytes must be in [1024"),
    ]:
        with pytest.raises(SystemExit):
            parse_config(ServerConfig, flags, env={})
        assert message in capsys.readouterr().err
