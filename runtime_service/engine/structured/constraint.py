"""Constraint: what a request's output must match, as plain data (it crosses the process
boundary between the frontend and the engine core inside SamplingParams).

`check()` parses it into an xgrammar Grammar without a tokenizer: the frontend calls it while
preparing a request, so a bad schema, regex or grammar is refused (InvalidArgument naming the
field and the parse error) before any compute. Compiling against the tokenizer, the slow part,
happens in the engine core (compiler.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llmserve.errors import InvalidArgument

CONSTRAINT_KINDS = ("json_schema", "json_object", "regex", "grammar", "choice")
MAX_CONSTRAINT_BYTES = 64 * 1024  # a schema, regex or grammar; or all choices together
MAX_CHOICES = 256


@dataclass(frozen=True, slots=True)
class Constraint:
    """kind: one of CONSTRAINT_KINDS. value: the JSON Schema text, regex or EBNF text; the
    choices (a tuple of strings) for "choice"; "" for "json_object"."""

    kind: str
    value: str | tuple[str, ...] = ""

    def __post_init__(self) -> None:
        if self.kind not in CONSTRAINT_KINDS:
            raise InvalidArgument(
                f"constraint kind must be one of {', '.join(CONSTRAINT_KINDS)}, got {self.kind!r}"
            )
        if self.kind == "choice":
            if not isinstance(self.value, tuple):
                object.__setattr__(self, "value", tuple(self.value))
            _require(len(self.value) > 0, "choice must hold at least one string")
            _require(
                len(self.value) <= MAX_CHOICES,
                f"choice may hold at most {MAX_CHOICES} strings, got {len(self.value)}",
            )
            _require(all(self.value), "choice strings must not be empty")
            size = sum(len(c.encode()) for c in self.value)
        else:
            _require(isinstance(self.value, str), f"{self.kind} must be a string")
            size = len(self.value.encode())  # type: ignore[union-attr]
            _require(self.kind == "json_object" or size > 0, f"{self.kind} must not be empty")
        _require(
            size <= MAX_CONSTRAINT_BYTES,
            f"{self.kind} must be at most {MAX_CONSTRAINT_BYTES} bytes, got {size}",
        )

    @property
    def key(self) -> tuple[str, str | tuple[str, ...]]:
        """What the compile cache is keyed by (with the tokenizer, fixed per engine)."""
        return (self.kind, self.value)

    def check(self) -> None:
        """Parses the constraint; InvalidArgument naming the field and the error if it does
        not parse. Costs no tokenizer work."""
        self.grammar()

    def grammar(self) -> Any:
        """The xgrammar Grammar of this constraint (raises InvalidArgument)."""
        import xgrammar as xgr

        try:
            if self.kind == "json_schema":
                _check_schema_json(self.value)  # type: ignore[arg-type]
                return xgr.Grammar.from_json_schema(self.value, **JSON_SCHEMA_OPTIONS)
            if self.kind == "json_object":
                return xgr.Grammar.from_json_schema(ANY_OBJECT, **JSON_OBJECT_OPTIONS)
            if self.kind == "regex":
                return xgr.Grammar.from_regex(self.value)  # type: ignore[arg-type]
            if self.kind == "grammar":
                return xgr.Grammar.from_ebnf(self.value)  # type: ignore[arg-type]
            return xgr.Grammar.from_ebnf(choice_ebnf(self.value))  # type: ignore[arg-type]
        except InvalidArgument:
            raise
        except Exception as e:  # xgrammar raises RuntimeError/ValueError subclasses
            what = {
                "json_schema": "invalid JSON Schema",
                "regex": "invalid regex",
                "grammar": "invalid EBNF grammar",
            }.get(self.kind, "invalid constraint")
            raise InvalidArgument(f"{self.kind}: {what}: {_first_line(e)}") from None


# How JSON Schemas are compiled (xgrammar's defaults but for a bound on whitespace runs, so a
# small model cannot spend its max_tokens on blank lines). strict_mode: properties and items
# the schema does not name are not generated (OpenAI's "strict" behaviour).
JSON_SCHEMA_OPTIONS: dict[str, Any] = {
    "any_whitespace": True,
    "max_whitespace_cnt": 4,
    "strict_mode": True,
}


# json_object: any JSON object, keys and values free (OpenAI's JSON mode).
ANY_OBJECT = '{"type": "object"}'
JSON_OBJECT_OPTIONS: dict[str, Any] = {**JSON_SCHEMA_OPTIONS, "strict_mode": False}


def choice_ebnf(choices: tuple[str, ...]) -> str:
    """root ::= "a" | "b" ..., each choice a literal (JSON string escapes, which xgrammar's
    EBNF reads)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _check_schema_json(text: str) -> None:
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"json_schema: not valid JSON: {e}") from None
    _require(
        isinstance(schema, dict | bool),
        f"json_schema: a schema must be a JSON object or boolean, got {type(schema).__name__}",
    )


# xgrammar's messages begin with "[hh:mm:ss] /path/to/source.cc:line: ".
_SOURCE_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:[0-9]+: ")


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    text = " ".join(line.strip() for line in text.splitlines()[:4])
    return _SOURCE_PREFIX.sub("", text)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidArgument(message)
