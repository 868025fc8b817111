"""Errors a caller can cause or must know about, each naming the gRPC status it maps to.

The engine, the store and the session code raise these and know nothing of gRPC; the server
interceptor (llmserve.server.interceptor) turns them into statuses. Messages name the field
and the limit: "sampling.top_p must be in (0, 1], got 1.5".
"""

from __future__ import annotations

MAX_SHOWN_CHARS = 80


def shown(value: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`value` quoted for an error message, cut to `limit` characters: a client-chosen id of
    any length must not make a status larger than gRPC's metadata limit."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


class LLMServeError(Exception):
    """Base class. `code` is the name of a grpc.StatusCode member."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        # Trailing metadata sent with the status (for example retry-after-ms).
        self.metadata = metadata

    def __str__(self) -> str:
        return self.message


class InvalidArgument(LLMServeError, ValueError):
    """A request field is malformed or out of range."""

    code = "INVALID_ARGUMENT"


class NotFound(LLMServeError, LookupError):
    """A named thing (engine, adapter, session, model) does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(LLMServeError):
    """The thing to create exists already."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(LLMServeError):
    """The system is not in a state where the request can run (wrong GPU architecture, ...)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(LLMServeError):
    """A queue, quota or rate limit is full."""

    code = "RESOURCE_EXHAUSTED"


class Aborted(LLMServeError):
    """A concurrency conflict (a session busy with another turn, ...)."""

    code = "ABORTED"


class Unavailable(LLMServeError):
    """A dependency is down or the server is draining; the call may be retried."""

    code = "UNAVAILABLE"


class Unauthenticated(LLMServeError):
    """Missing or unknown credentials."""

    code = "UNAUTHENTICATED"


class PermissionDenied(LLMServeError):
    """Credentials are valid but do not allow this."""

    code = "PERMISSION_DENIED"


class DataLoss(LLMServeError):
    """Stored data is corrupt (an engine file failing its checksum, ...)."""

    code = "DATA_LOSS"


class Unimplemented(LLMServeError):
    """The call exists in the contract but is not served here."""

    code = "UNIMPLEMENTED"
