"""Settings parsed once, from flags and LLMSERVE_* environment variables, into dataclasses.

Each daemon declares a dataclass of its settings; every field becomes a flag `--field-name`
and an environment variable `LLMSERVE_FIELD_NAME`. A flag beats the environment, which beats
the field's default. Validation lives in `__post_init__` and raises ValueError, which the
command line reports as a usage error naming the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llmserve import __version__

ENV_PREFIX = "LLMSERVE_"

C = TypeVar("C")


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text. `positional=True` makes it a positional argument
    instead of a flag (still with its environment variable)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of an annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported setting type {tp}")
        return args[0], True
    return tp, False


def _convert(tp: Any, raw: str) -> Any:
    """Parses one setting's text (from a flag or the environment) into its type."""
    base, optional = _base_type(tp)
    if optional and raw.strip() == "":
        return None
    if base is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {raw!r}")
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        return [_convert(item, part.strip()) for part in raw.split(",") if part.strip()]
    if base in (int, float, str, Path):
        return base(raw)
    raise TypeError(f"unsupported setting type {tp}")


def help_with_default(help: str, default: Any, env: str) -> str:
    """A setting's help: its text, its default unless it has none (None, "", []) or the text
    already says it ("default: the engine's"), and its environment variable."""
    shown = ",".join(map(str, default)) if isinstance(default, list) else default
    if isinstance(shown, bool):
        shown = str(shown).lower()
    if shown is None or shown == "" or "default" in help:
        return f"{help} (env {env})"
    return f"{help} (default: {shown}; env {env})"


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the settings dataclass `cls`, and
    --version."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        base, _ = _base_type(tp)
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        help_text = help_with_default(f.metadata.get("help", ""), default, env_name(f.name))
        if base is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            metavar = f.metadata.get("metavar") or f.name.upper()
            if f.metadata.get("positional"):
                names, where = [f.name], {"nargs": "?"}
            else:
                names, where = [flag], {"dest": f.name}
            parser.add_argument(
                *names,
                **where,
                default=None,
                metavar=metavar,
                help=help_text,
                type=lambda raw, tp=tp: _convert(tp, raw),
            )
    return parser


def parse_config(
    cls: type[C],
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    prog: str | None = None,
    description: str = "",
) -> C:
    """Parses flags (argv) and environment (env) into an instance of the dataclass `cls`.

    Exits with status 2 and a message naming the setting when a value is malformed or fails
    the dataclass's own validation.
    """
    env = os.environ if env is None else env
    parser = build_parser(cls, prog or cls.__name__, description)
    args = parser.parse_args(argv)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        if value is None and env_name(f.name) in env:
            try:
                value = _convert(hints[f.name], env[env_name(f.name)])
            except (TypeError, ValueError) as e:
                parser.error(f"{env_name(f.name)}: {e}")
        if value is not None:
            values[f.name] = value
    try:
        return cls(**values)
    except ValueError as e:
        parser.error(str(e))
    raise AssertionError("unreachable")


def require(condition: bool, message: str) -> None:
    """Raises ValueError(message) unless condition holds; for __post_init__ validation."""
    if not condition:
        raise ValueError(message)
