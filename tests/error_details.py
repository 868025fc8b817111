"""Reads the google.rpc details of a failed call the way any grpcio client would: the
`grpc-status-details-bin` trailer parsed with googleapis-common-protos' messages, not with
llmserve's own decoder (llmserve/server/rich_status.py)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class Decoded:
    """What one error status says."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    fields: list[str]
    retry_delay_s: float | None


def decode(err: grpc.RpcError) -> Decoded:
    """The status and details of a sync or aio call's error; fails if it carries none."""
    trailing = err.trailing_metadata() or ()  # type: ignore[attr-defined]
    raw = [v for k, v in trailing if k == DETAILS_KEY]
    assert raw, f"no {DETAILS_KEY} in {trailing!r}"
    status = status_pb2.Status.FromString(raw[0])
    assert status.code == err.code().value[0]  # type: ignore[attr-defined]
    assert status.message == err.details()  # type: ignore[attr-defined]
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    retry = error_details_pb2.RetryInfo()
    found = {"info": False, "retry": False}
    for detail in status.details:
        if detail.Unpack(info):
            found["info"] = True
        elif detail.Unpack(bad):
            pass
        elif detail.Unpack(retry):
            found["retry"] = True
    assert found["info"], f"no ErrorInfo in {status}"
    return Decoded(
        code=err.code(),  # type: ignore[attr-defined]
        message=status.message,
        reason=info.reason,
        domain=info.domain,
        fields=[v.field for v in bad.field_violations],
        retry_delay_s=retry.retry_delay.ToNanoseconds() / 1e9 if found["retry"] else None,
    )
