"""Checks of client input that name the field and the limit (no protobuf here)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.routing import ModelInfo
from llmserve.errors import InvalidArgument, NotFound, shown
from llmserve.reasons import Reason

MAX_REQUEST_ID_CHARS = 128


def check_text(field: str, text: str, max_bytes: int, *, required: bool) -> str:
    """`text` if it is within `max_bytes` of UTF-8 (and not empty when `required`)."""
    if required and not text.strip():
        raise InvalidArgument(
            f"{field} must not be empty", reason=Reason.FIELD_REQUIRED, field=field
        )
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidArgument(
            f"{field} is {size} bytes, more than the limit of {max_bytes} bytes"
            " (max_chat_message_bytes)",
            reason=Reason.FIELD_TOO_LONG,
            field=field,
        )
    return text


def check_request_id(field: str, request_id: str) -> str:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(
            f"{field} is {len(request_id)} characters, more than the limit of"
            f" {MAX_REQUEST_ID_CHARS}",
            reason=Reason.FIELD_TOO_LONG,
            field=field,
        )
    return request_id


def check_ttl_ms(ttl_ns: int | None, default_s: float, max_s: float) -> int:
    """The session TTL in ms: the request's `ttl_ns` if given, else the default."""
    if ttl_ns is None:
        return int(default_s * 1000)
    max_ns = int(max_s * 1e9)
    if not 1_000_000 <= ttl_ns <= max_ns:
        raise InvalidArgument(
            f"ttl_ns must be in [1000000 (1 ms), {max_ns} (max_session_ttl_s)], got {ttl_ns}",
            field="ttl_ns",
        )
    return ttl_ns // 1_000_000


def check_model(models: Sequence[ModelInfo], name: str, adapter: str = "") -> ModelInfo:
    """The model called `name` (NotFound naming the models served otherwise), and that
    `adapter`, when given, is loaded on one of its runtimes."""
    served = ", ".join(repr(m.name) for m in models) or "none (no runtime has reported yet)"
    if not name:
        raise InvalidArgument(
            f"model is required; models served: {served}",
            reason=Reason.FIELD_REQUIRED,
            field="model",
        )
    found = next((m for m in models if m.name == name), None)
    if found is None:
        raise NotFound(
            f"model {shown(name)} is not served by any runtime; models served: {served}",
            reason=Reason.MODEL_NOT_FOUND,
        )
    if adapter and adapter not in found.adapters:
        loaded = ", ".join(repr(a) for a in found.adapters) or "none"
        raise NotFound(
            f"adapter {shown(adapter)} is not loaded on any runtime of model {shown(name)};"
            f" loaded: {loaded}",
            reason=Reason.ADAPTER_NOT_FOUND,
        )
    return found
