"""Settings of the gateway daemon."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmserve.config import require, setting
from llmserve.server import ServerConfig


def split_host_port(value: str, what: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError naming `what` otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{what} must be HOST:PORT with a port in [1, 65535], got {value!r}")
    return host, int(port)


@dataclass(kw_only=True)
class GatewayConfig(ServerConfig):
    """The gateway's listener, its runtimes, Redis, API keys, rate limits and sessions."""

    port: int = setting(50051, "gRPC port (0 picks a free one)")
    http_port: int | None = setting(
        None,
        "port of the OpenAI-compatible HTTP API (/v1/chat/completions, ...; 0 picks a free"
        " one); unset: no HTTP API",
    )
    # Runtimes: a fixed list, or a DNS name re-resolved every runtime_refresh_s.
    runtime: list[str] = setting([], "runtime addresses HOST:PORT, comma-separated")
    runtime_dns: str = setting(
        "", "NAME:PORT resolving to every runtime (a headless Kubernetes Service)"
    )
    runtime_refresh_s: float = setting(
        2.0, "how often runtimes are re-resolved, health-checked and asked for their status"
    )
    runtime_timeout_s: float = setting(2.0, "timeout of one health check or GetStatus call")
    runtime_keepalive_s: float = setting(
        10.0,
        "HTTP/2 ping to each runtime this often; one not answered within runtime_timeout_s fails"
        " the runtime's calls (a frozen or partitioned runtime, however long its queue; 0: off)",
    )
    runtime_idle_timeout_s: float = setting(
        60.0,
        "a runtime stream that sends nothing for this long (first token included) is failed:"
        " the request moves to another runtime before its first token, ends UNAVAILABLE after;"
        " keep it above the longest wait in a runtime's queue",
    )
    relay_coalesce: bool = setting(
        True,
        "Generate: runtime chunks that arrive while the caller is still being sent earlier ones"
        " go out as one chunk (same tokens, text and usage; fewer messages for a slow caller)",
    )
    runtime_token_file: Path | None = setting(
        None, "file holding the runtimes' service token (their service_token_file), sent on calls"
    )
    runtime_tls_ca: Path | None = setting(
        None, "PEM CA bundle: call runtimes over TLS, verifying their certificates with it"
    )
    runtime_tls_cert: Path | None = setting(
        None, "PEM client certificate presented to runtimes that require mTLS (with its key)"
    )
    runtime_tls_key: Path | None = setting(None, "PEM private key of runtime_tls_cert")
    max_route_attempts: int = setting(
        3, "runtimes tried for one request that fails before its first token"
    )
    # Redis: sessions, hashed API keys, rate-limit buckets.
    redis: str = setting("redis://127.0.0.1:6379/0", "Redis URL (redis:// or rediss://)")
    redis_tls_ca: Path | None = setting(
        None,
        "with a rediss:// URL: PEM CA bundle verifying Redis's certificate (default: the system's)",
    )
    redis_tls_cert: Path | None = setting(
        None, "with a rediss:// URL: PEM client certificate for Redis (with redis_tls_key)"
    )
    redis_tls_key: Path | None = setting(None, "PEM private key of redis_tls_cert")
    redis_cluster: bool = setting(
        False, "the redis URL names one node of a Redis Cluster (keys are hash-tagged for it)"
    )
    redis_timeout_s: float = setting(2.0, "timeout of one Redis command or connection attempt")
    redis_retries: int = setting(3, "retries (exponential backoff) of a failed Redis command")
    redis_max_connections: int = setting(
        512,
        "Redis connections the gateway keeps open at most (per node with redis_cluster); a call"
        " that finds them all busy waits for one (redis_pool_timeout_s)",
    )
    redis_pool_timeout_s: float = setting(
        10.0, "how long a call waits for a free Redis connection before UNAVAILABLE"
    )
    # Auth and rate limits.
    api_keys_file: Path | None = setting(
        None,
        "file of `name:key` lines; each key (stored sha256-hashed in Redis) acts as owner `name`."
        " Unset: the keys already in Redis are used as they are",
    )
    api_keys_sync_s: float = setting(30.0, "how often the keys file is re-read into Redis")
    api_keys_miss_sync_s: float = setting(
        1.0, "an unknown key re-reads the keys file into Redis at most this often"
    )
    auth_failure_rps: float = setting(
        1.0, "failed authentications per second per client address (0 turns the limit off)"
    )
    auth_failure_burst: int = setting(
        20, "failed authentications a client address may make at once before it is refused"
    )
    rate_limit_rps: float = setting(10.0, "requests per second per API key (0 turns it off)")
    rate_limit_burst: int = setting(20, "requests an API key may make at once (bucket size)")
    # Sessions.
    session_ttl_s: float = setting(86400.0, "idle time after which a session expires")
    max_session_ttl_s: float = setting(
        30 * 86400.0, "largest CreateSession.ttl_ns a client may ask for, in seconds"
    )
    session_lock_ttl_s: float = setting(
        30.0,
        "a Chat holds its session's busy lock this long, renewed while it streams; a gateway"
        " that dies mid-turn leaves the session busy at most this long",
    )
    max_chat_message_bytes: int = setting(
        65536, "largest user message or system prompt, in UTF-8 bytes"
    )
    max_session_turns: int = setting(1000, "turns (user + assistant message) a session holds")

    def redis_tls(self) -> dict[str, str]:
        """redis-py's ssl_* options for a rediss:// URL (empty: its defaults)."""
        options = {
            "ssl_ca_certs": self.redis_tls_ca,
            "ssl_certfile": self.redis_tls_cert,
            "ssl_keyfile": self.redis_tls_key,
        }
        return {k: str(v) for k, v in options.items() if v is not None}

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.service_token_file is None,
            "service_token_file is for runtimes and builders; the gateway sends it to runtimes"
            " with runtime_token_file",
        )
        require(
            not (self.runtime and self.runtime_dns),
            "runtime and runtime_dns are exclusive: give a list or a DNS name",
        )
        require(
            self.http_port is None or 0 <= self.http_port <= 65535,
            f"http_port must be in [0, 65535], got {self.http_port}",
        )
        for address in self.runtime:
            split_host_port(address, "runtime")
        for cert, key in (
            ("runtime_tls_cert", "runtime_tls_key"),
            ("redis_tls_cert", "redis_tls_key"),
        ):
            require(
                (getattr(self, cert) is None) == (getattr(self, key) is None),
                f"{cert} and {key} must be given together",
            )
        require(
            self.runtime_tls_cert is None or self.runtime_tls_ca is not None,
            "runtime_tls_cert (mTLS to runtimes) needs runtime_tls_ca",
        )
        require(
            self.redis.startswith("rediss://")
            or (self.redis_tls_ca is None and self.redis_tls_cert is None),
            "redis_tls_ca and redis_tls_cert need a rediss:// URL",
        )
        if self.runtime_dns:
            split_host_port(self.runtime_dns, "runtime_dns")
        require(
            self.redis.startswith(("redis://", "rediss://", "unix://")),
            f"redis must be a redis://, rediss:// or unix:// URL, got {self.redis!r}",
        )
        positive = {
            "runtime_refresh_s": self.runtime_refresh_s,
            "runtime_timeout_s": self.runtime_timeout_s,
            "runtime_idle_timeout_s": self.runtime_idle_timeout_s,
            "redis_timeout_s": self.redis_timeout_s,
            "redis_pool_timeout_s": self.redis_pool_timeout_s,
            "api_keys_sync_s": self.api_keys_sync_s,
            "api_keys_miss_sync_s": self.api_keys_miss_sync_s,
            "session_ttl_s": self.session_ttl_s,
            "session_lock_ttl_s": self.session_lock_ttl_s,
        }
        for name, value in positive.items():
            require(value > 0, f"{name} must be > 0, got {value}")
        require(
            self.runtime_keepalive_s == 0 or self.runtime_keepalive_s >= 1,
            f"runtime_keepalive_s must be 0 (off) or >= 1, got {self.runtime_keepalive_s}",
        )
        require(self.redis_retries >= 0, f"redis_retries must be >= 0, got {self.redis_retries}")
        require(
            self.redis_max_connections >= 1,
            f"redis_max_connections must be >= 1, got {self.redis_max_connections}",
        )
        require(
            self.max_route_attempts >= 1,
            f"max_route_attempts must be >= 1, got {self.max_route_attempts}",
        )
        require(self.rate_limit_rps >= 0, f"rate_limit_rps must be >= 0, got {self.rate_limit_rps}")
        require(
            self.auth_failure_rps >= 0,
            f"auth_failure_rps must be >= 0, got {self.auth_failure_rps}",
        )
        require(
            self.auth_failure_burst >= 1,
            f"auth_failure_burst must be >= 1, got {self.auth_failure_burst}",
        )
        require(
            self.rate_limit_burst >= 1,
            f"rate_limit_burst must be >= 1, got {self.rate_limit_burst}",
        )
        require(
            self.max_session_ttl_s >= self.session_ttl_s,
            f"max_session_ttl_s ({self.max_session_ttl_s}) must be >= session_ttl_s"
            f" ({self.session_ttl_s})",
        )
        require(
            1 <= self.max_chat_message_bytes <= self.max_message_bytes,
            f"max_chat_message_bytes must be in [1, max_message_bytes={self.max_message_bytes}],"
            f" got {self.max_chat_message_bytes}",
        )
        require(
            self.max_session_turns >= 1,
            f"max_session_turns must be >= 1, got {self.max_session_turns}",
        )
