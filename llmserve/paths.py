"""Checks of paths and URIs that clients send (a source to build, an adapter directory)."""

from __future__ import annotations

from llmserve.errors import InvalidArgument, shown
from llmserve.reasons import Reason

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux


def check_path(field: str, value: str) -> str:
    """`value` if the OS can take it as a path: no NUL character (Python's os calls raise
    ValueError on one) and at most MAX_PATH_CHARS characters; InvalidArgument otherwise."""
    if len(value) > MAX_PATH_CHARS:
        raise InvalidArgument(
            f"{field} is {len(value)} characters, more than the limit of {MAX_PATH_CHARS}",
            reason=Reason.FIELD_TOO_LONG,
            field=field,
        )
    if "\0" in value:
        raise InvalidArgument(
            f"{field} must not contain a NUL character, got {shown(value)}",
            reason=Reason.INVALID_FIELD,
            field=field,
        )
    return value
