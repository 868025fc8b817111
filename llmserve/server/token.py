"""Service-to-service authentication: a shared bearer token read from a file (a mounted
Kubernetes Secret).

A runtime or builder given `service_token_file` answers every call except health and
reflection only when it carries `authorization: Bearer <token>`. The file is read at start and
again whenever its modification time changes (a rotated Secret takes effect without a
restart); a caller such as the gateway reads the same file with `read_token`.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Sequence
from pathlib import Path

from llmserve.errors import Unauthenticated
from llmserve.reasons import Reason

MIN_TOKEN_CHARS = 16


def read_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace stripped); ValueError if it is too short."""
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(
            f"{path}: a service token must be at least {MIN_TOKEN_CHARS} characters without spaces"
        )
    return token


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that carries `token`."""
    return (("authorization", f"Bearer {token}"),)


class TokenFile:
    """The token in a file, read again when the file changes (the last good one is kept
    while a Secret is being replaced). The first read's errors are raised."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime_ns = os.stat(path).st_mtime_ns
        self._token = read_token(path)

    def value(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            mtime_ns = os.stat(self.path).st_mtime_ns
            if mtime_ns != self._mtime_ns:
                self._token = read_token(self.path)
                self._mtime_ns = mtime_ns
        return self._token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return token_metadata(self.value())


class ServiceToken:
    """Checks calls against the token in a file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self._file = TokenFile(path)

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> None:
        """Unauthenticated unless `metadata` carries the token."""
        values = [v for k, v in metadata or () if k.lower() == "authorization"]
        value = values[0] if values and isinstance(values[0], str) else ""
        scheme, _, given = value.strip().partition(" ")
        expected = self._file.value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise Unauthenticated(
                "this service takes calls only from other llmserve services: send metadata"
                " `authorization: Bearer <service token>` (the token of service_token_file)",
                reason=Reason.SERVICE_TOKEN_INVALID,
            )
