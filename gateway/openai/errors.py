"""Errors in OpenAI's JSON shape, with the HTTP status of the gRPC code the gateway raised.

The gateway's errors (llmserve.errors) carry a gRPC code; the HTTP API maps that code once,
here. An error's retry hint (the RetryInfo of its gRPC status: rate limits, full queues) becomes
the `Retry-After` (seconds, rounded up) and `retry-after-ms` headers, both of which the openai
client honours. `error.code` is the error's stable reason in lower case
("session_not_found", "rate_limited"; protos/ERRORS.md), `error.param` the field at fault.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pydantic import ValidationError

from gateway.openai.requests import ParamError
from gateway.openai.responses import ErrorBody, ErrorResponse
from llmserve.errors import LLMServeError

log = logging.getLogger(__name__)

# gRPC code -> (HTTP status, OpenAI error type).
_BY_CODE: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "ALREADY_EXISTS": (409, "conflict_error"),
    "ABORTED": (409, "conflict_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "UNIMPLEMENTED": (501, "not_implemented_error"),
    "UNAVAILABLE": (503, "service_unavailable_error"),
    "DEADLINE_EXCEEDED": (504, "timeout_error"),
}


@dataclass(frozen=True, slots=True)
class HttpError:
    """What an HTTP response says about one failure."""

    status: int
    body: ErrorResponse
    headers: dict[str, str]

    def json(self) -> bytes:
        return self.body.model_dump_json().encode()


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
}


def _path(loc: tuple[int | str, ...]) -> list[str]:
    """The field path of a pydantic error location, without the type names under which
    union members appear (`stop.list[str]` → `stop`)."""
    parts = [str(p) for p in loc]
    return [p for p in parts if (p.isidentifier() and p not in ("str", "int")) or p.isdigit()]


def _validation_message(e: ValidationError) -> tuple[str, str]:
    """(param, message) of the first field pydantic refused. Of a union's errors, one that
    is not a plain type mismatch (a range, a length) says most."""
    errors = e.errors(include_url=False)
    cause = (errors[0].get("ctx") or {}).get("error")
    if isinstance(cause, ParamError):
        return cause.param, cause.message
    path = _path(errors[0]["loc"])
    same = [x for x in errors if _path(x["loc"])[:1] == path[:1]]
    specific = [x for x in same if x["type"] not in _TYPE_NAMES]
    where = ".".join(path) or "body"
    if specific:
        where = ".".join(_path(specific[0]["loc"])) or "body"
        message = specific[0]["msg"]
    else:
        expected = dict.fromkeys(_TYPE_NAMES.get(x["type"], x["type"]) for x in same)
        message = "Input should be " + " or ".join(expected)
    return (path[0] if path else "body"), f"{where}: {message}"


def http_error(exc: BaseException) -> HttpError:
    """The HTTP status, OpenAI error body and headers of `exc`."""
    param: str | None = None
    headers: dict[str, str] = {}
    if isinstance(exc, ValidationError):
        param, message = _validation_message(exc)
        status, kind, code = 400, "invalid_request_error", "invalid_parameter"
    elif isinstance(exc, LLMServeError):
        status, kind = _BY_CODE.get(exc.code, (500, "server_error"))
        message, code = exc.message, str(exc.reason).lower()
        param = exc.param if isinstance(exc, ParamError) else exc.field
        if exc.retry_after_s is not None:
            wait_ms = max(0, math.ceil(exc.retry_after_s * 1000))
            headers["retry-after-ms"] = str(wait_ms)
            headers["retry-after"] = str(max(1, math.ceil(wait_ms / 1000)))
    else:
        log.error("internal error", exc_info=exc)
        status, kind, code = 500, "server_error", "internal"
        message = f"internal error: {type(exc).__name__}: {exc}"
    body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code))
    return HttpError(status, body, headers)
