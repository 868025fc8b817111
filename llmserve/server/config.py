"""Settings every daemon has: listener, limits, drain, logs, metrics and traces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmserve.config import require, setting

LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_LOOPS = ("uvloop", "asyncio")


@dataclass(kw_only=True)
class ServerConfig:
    """The gRPC listener and the cross-cutting settings of a daemon."""

    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 or [::] for all)")
    port: int = setting(50051, "gRPC port (0 picks a free one)")
    max_message_bytes: int = setting(16 * 1024 * 1024, "largest gRPC message sent or received")
    grace_period_s: float = setting(
        30.0, "on SIGTERM, how long in-flight calls may run before the process exits"
    )
    event_loop: str = setting(
        "uvloop",
        "uvloop or asyncio (the standard library's): uvloop relays ~15 percent more streamed chunks"
        " per CPU-second (bench/gateway_relay.py)",
    )
    log_level: str = setting("info", "one of debug, info, warning, error")
    log_format: str = setting("json", "json (one object per line) or text")
    metrics_port: int = setting(0, "Prometheus metrics HTTP port (0 turns metrics off)")
    metrics_host: str = setting("", "address of the metrics listener (default: the same as host)")
    otlp_endpoint: str = setting(
        "",
        "OTLP collector for traces, e.g. localhost:4317 (plaintext) or https://host:4317;"
        " overrides OTEL_EXPORTER_OTLP_ENDPOINT (the OTEL_* variables: docs/operations.md)",
    )
    trace_file: Path | None = setting(None, "also write finished spans to this file, as JSON lines")
    tls_cert: Path | None = setting(None, "PEM certificate chain: serve TLS instead of plaintext")
    tls_key: Path | None = setting(None, "PEM private key of tls_cert")
    tls_client_ca: Path | None = setting(
        None, "PEM CA bundle: require client certificates signed by it (mTLS)"
    )
    service_token_file: Path | None = setting(
        None,
        "file holding a shared token (a mounted Secret): every call but health and reflection"
        " must send `authorization: Bearer <token>` (runtime and builder; not the gateway,"
        " whose callers send API keys)",
    )

    @property
    def metrics_address(self) -> str:
        """Where the metrics listener binds: metrics_host, else host (without [] brackets)."""
        return (self.metrics_host or self.host).removeprefix("[").removesuffix("]")

    def __post_init__(self) -> None:
        require(0 <= self.port <= 65535, f"port must be in [0, 65535], got {self.port}")
        require(
            0 <= self.metrics_port <= 65535,
            f"metrics_port must be in [0, 65535], got {self.metrics_port}",
        )
        require(
            1024 <= self.max_message_bytes <= 2**31 - 1,
            f"max_message_bytes must be in [1024, 2147483647], got {self.max_message_bytes}",
        )
        require(self.grace_period_s >= 0, f"grace_period_s must be >= 0, got {self.grace_period_s}")
        require(
            self.event_loop in EVENT_LOOPS,
            f"event_loop must be one of {EVENT_LOOPS}, got {self.event_loop!r}",
        )
        require(self.log_level in LOG_LEVELS, f"log_level must be one of {LOG_LEVELS}")
        require(self.log_format in ("json", "text"), "log_format must be json or text")
        require(
            (self.tls_cert is None) == (self.tls_key is None),
            "tls_cert and tls_key must be given together",
        )
        require(
            self.tls_client_ca is None or self.tls_cert is not None,
            "tls_client_ca (mTLS) needs tls_cert and tls_key",
        )
