"""Errors a caller can cause or must know about, each naming the gRPC status it maps to.

The engine, the store and the session code raise these and know nothing of gRPC; the server
interceptor (llmserve.server.interceptor) turns them into statuses, with google.rpc details
built by llmserve.server.rich_status. Messages name the field and the limit: "sampling.top_p
must be in (0, 1], got 1.5". Each raise names its `reason` (llmserve.reasons.Reason, stable and
documented in protos/ERRORS.md), the request `field` at fault where there is one, and for
refusals worth retrying later a `retry_after_s` hint.
"""

from __future__ import annotations

from typing import Any

from llmserve.reasons import Reason

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
    # The reason of a raise that names none (each class's generic one).
    default_reason: Reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        field: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        # The request field at fault ("sampling.top_p"), sent as a BadRequest.FieldViolation.
        self.field = field
        # When a retry may succeed, sent as RetryInfo.
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross the engine core's pipe; keep the keyword arguments through pickling.
        return (_rebuild, (type(self), self.message, self.reason, self.field, self.retry_after_s))

    def with_message(self, message: str) -> LLMServeError:
        """The same error (class, reason, field, retry hint) with another message."""
        return type(self)(
            message, reason=self.reason, field=self.field, retry_after_s=self.retry_after_s
        )


def _rebuild(
    cls: type[LLMServeError],
    message: str,
    reason: Reason,
    field: str | None,
    retry_after_s: float | None,
) -> LLMServeError:
    return cls(message, reason=reason, field=field, retry_after_s=retry_after_s)


class InvalidArgument(LLMServeError, ValueError):
    """A request field is malformed or out of range."""

    code = "INVALID_ARGUMENT"
    default_reason = Reason.INVALID_FIELD


class NotFound(LLMServeError, LookupError):
    """A named thing (engine, adapter, session, model) does not exist."""

    code = "NOT_FOUND"
    default_reason = Reason.NOT_FOUND


class AlreadyExists(LLMServeError):
    """The thing to create exists already."""

    code = "ALREADY_EXISTS"
    default_reason = Reason.ALREADY_EXISTS


class FailedPrecondition(LLMServeError):
    """The system is not in a state where the request can run (wrong GPU architecture, ...)."""

    code = "FAILED_PRECONDITION"
    default_reason = Reason.FAILED_PRECONDITION


class ResourceExhausted(LLMServeError):
    """A queue, quota or rate limit is full."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = Reason.RESOURCE_EXHAUSTED


class Aborted(LLMServeError):
    """A concurrency conflict (a session busy with another turn, ...)."""

    code = "ABORTED"
    default_reason = Reason.ABORTED


class Unavailable(LLMServeError):
    """A dependency is down or the server is draining; the call may be retried."""

    code = "UNAVAILABLE"
    default_reason = Reason.UNAVAILABLE


class Unauthenticated(LLMServeError):
    """Missing or unknown credentials."""

    code = "UNAUTHENTICATED"
    default_reason = Reason.UNAUTHENTICATED


class PermissionDenied(LLMServeError):
    """Credentials are valid but do not allow this."""

    code = "PERMISSION_DENIED"
    default_reason = Reason.PERMISSION_DENIED


class DataLoss(LLMServeError):
    """Stored data is corrupt (an engine file failing its checksum, ...)."""

    code = "DATA_LOSS"
    default_reason = Reason.DATA_LOSS


class Unimplemented(LLMServeError):
    """The call exists in the contract but is not served here."""

    code = "UNIMPLEMENTED"
    default_reason = Reason.UNIMPLEMENTED
