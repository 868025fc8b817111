"""The one place errors become google.rpc.Status with details, and details become errors again.

Every error a daemon raises (llmserve.errors) ends the call with a status whose
`grpc-status-details-bin` trailer holds a google.rpc.Status (grpcio-status) carrying:
- `ErrorInfo`: the stable `reason` (llmserve.reasons.Reason) and `domain` "llmserve.dev";
  `metadata` says the gRPC code by name ("code": "NOT_FOUND");
- `BadRequest` with one `FieldViolation` (field path, message) when the error names a field;
- `RetryInfo` (retry_delay) when waiting may help: rate limits, a drain, a full queue.
The reasons are documented in protos/ERRORS.md. The gateway turns a runtime's status back into
an error with the same details (error_from_rpc) so that its own caller sees them unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from llmserve import errors
from llmserve.reasons import DOMAIN, Reason

DETAILS_KEY = "grpc-status-details-bin"
# How long a client should wait before retrying elsewhere when a server drains.
DRAIN_RETRY_AFTER_S = 1.0
_BY_CODE: dict[str, type[errors.LLMServeError]] = {
    cls.code: cls for cls in errors.LLMServeError.__subclasses__()
}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def to_status(exc: errors.LLMServeError, message: str | None = None) -> grpc.Status:
    """The gRPC status of `exc` (its code, `message` or its own, and the rich details)."""
    code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)
    text = exc.message if message is None else message
    info = error_details_pb2.ErrorInfo(
        reason=str(exc.reason), domain=DOMAIN, metadata={"code": code.name}
    )
    details = [_pack(info)]
    if exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=text)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if exc.retry_after_s is not None:
        delay = _duration(max(exc.retry_after_s, 0.0))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=text, details=details)
    return rpc_status.to_status(status)


@dataclass(frozen=True, slots=True)
class RichDetails:
    """What a google.rpc.Status says beyond its code and message."""

    reason: str = ""
    domain: str = ""
    field: str | None = None
    retry_after_s: float | None = None


def details_from_metadata(trailing: Iterable[tuple[str, str | bytes]] | None) -> RichDetails:
    """The details in a call's trailing metadata (empty when it has none or they are bad)."""
    raw = next((v for k, v in trailing or () if k == DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return RichDetails()
    try:
        status = status_pb2.Status.FromString(raw)
    except Exception:  # a peer's garbage must not turn into an internal error here
        return RichDetails()
    reason = domain = ""
    field: str | None = None
    retry_after_s: float | None = None
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason, domain = info.reason, info.domain
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            field = bad.field_violations[0].field if bad.field_violations else None
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_after_s = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return RichDetails(reason, domain, field, retry_after_s)


def error_from_rpc(
    code: grpc.StatusCode,
    message: str,
    trailing: Iterable[tuple[str, str | bytes]] | None,
    *,
    fallback: type[errors.LLMServeError] = errors.Unavailable,
) -> errors.LLMServeError:
    """An error with `code` (or `fallback` for codes without a class), `message` and the
    reason, field and retry hint of the peer's details; an llmserve reason is kept as is."""
    cls = _BY_CODE.get(code.name, fallback)
    details = details_from_metadata(trailing)
    reason = None
    if details.domain == DOMAIN and details.reason in Reason.__members__:
        reason = Reason(details.reason)
    return cls(message, reason=reason, field=details.field, retry_after_s=details.retry_after_s)


def draining_error() -> errors.Unavailable:
    """The error of a call refused because the server drains (gRPC and HTTP alike)."""
    return errors.Unavailable(
        "server is draining; retry on another replica",
        reason=Reason.DRAINING,
        retry_after_s=DRAIN_RETRY_AFTER_S,
    )


def draining() -> grpc.Status:
    """The status of a call refused because the server drains."""
    return to_status(draining_error())


async def abort(context: grpc.aio.ServicerContext, status: grpc.Status) -> None:
    """Ends the call with `status` and its details (raises grpc.aio.AbortError)."""
    await context.abort(status.code, status.details, status.trailing_metadata)
