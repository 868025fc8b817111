"""Structured output: constraints (JSON Schema, any JSON, regex, EBNF grammar, choice) turned
into per-step token bitmasks with xgrammar. See docs/structured_output.md."""

from runtime_service.engine.structured.constraint import CONSTRAINT_KINDS, Constraint

__all__ = ["CONSTRAINT_KINDS", "Constraint"]
