"""Structured output in the OpenAI-compatible API: `response_format` and vLLM's `guided_*`
extensions -> the oneof `constraint` of llmserve.v1.SamplingParams.

- `response_format`: {"type": "text"} (no constraint), {"type": "json_object"}, or
  {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}.
- vLLM's extras (the openai client sends them with `extra_body`): `guided_json` (a schema, as an
  object or JSON text), `guided_regex`, `guided_grammar` (EBNF), `guided_choice` (strings).

At most one may be set. Shapes are checked here (a 400 naming the parameter); whether the
schema, regex or grammar parses is the runtime's check (its INVALID_ARGUMENT names the field and
the parse error, and reaches the caller as a 400).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.openai.requests import refuse

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_grammar", "guided_choice")


def constraint_fields(
    response_format: dict[str, Any] | None, guided: dict[str, Any]
) -> dict[str, Any]:
    """Keyword arguments for common_pb2.SamplingParams (empty: free text)."""
    found: list[tuple[str, dict[str, Any]]] = []
    if response_format is not None:
        fields = _response_format(response_format)
        if fields:
            found.append(("response_format", fields))
    for name in GUIDED_FIELDS:
        value = guided.get(name)
        if value is not None:
            found.append((name, _guided(name, value)))
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        refuse(found[1][0], f"at most one output constraint may be set, got {names}")
    return found[0][1] if found else {}


def _response_format(rf: dict[str, Any]) -> dict[str, Any]:
    kind = rf.get("type", "text")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            refuse(
                "response_format",
                "response_format of type 'json_schema' needs json_schema.schema (an object)",
            )
        schema = spec["schema"]
        if not isinstance(schema, dict | bool):
            refuse("response_format", "response_format.json_schema.schema must be an object")
        return {"json_schema": json.dumps(schema)}
    refuse(
        "response_format",
        f"response_format type {kind!r} is not supported by llmserve; only 'text',"
        " 'json_object' and 'json_schema'",
    )
    return {}


def _guided(name: str, value: Any) -> dict[str, Any]:
    if name == "guided_json":
        if isinstance(value, str):
            return {"json_schema": value}
        if isinstance(value, dict | bool):
            return {"json_schema": json.dumps(value)}
        refuse(name, "guided_json must be a JSON Schema (an object or its JSON text)")
    if name == "guided_choice":
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            refuse(name, "guided_choice must be a non-empty list of strings")
        return {"choice": {"values": value}}
    if not isinstance(value, str) or not value:
        refuse(name, f"{name} must be a non-empty string")
    return {"regex" if name == "guided_regex" else "grammar": value}
