"""Entry point of the gateway daemon: `python -m gateway` or `llmserve gateway`.

Start-up (warm-up, while health reads NOT_SERVING): read the API keys file (a malformed one
stops start-up), copy its hashed keys into Redis, and check every runtime once. Redis or the
runtimes being down does not stop start-up: calls that need them get UNAVAILABLE until they
are back, and the background loops keep trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import grpc

from gateway.auth import ApiKeys
from gateway.config import GatewayConfig
from gateway.discovery import Discovery, DnsDiscovery, StaticDiscovery
from gateway.openai.server import serve_http
from gateway.ratelimit import FailedAuthLimiter, RateLimiter
from gateway.redis_store import RedisStore
from gateway.relay import add_gateway_to_server
from gateway.runtime_pool import RuntimePool
from gateway.service import GatewayServicer
from gateway.sessions import SessionStore
from llmserve.config import parse_config
from llmserve.errors import Unavailable
from llmserve.server import Daemon, Service, run_daemon

log = logging.getLogger(__name__)

DESCRIPTION = "The llmserve gateway: sessions, auth and rate limits, routing to runtimes."


async def _sync_keys(keys: ApiKeys, level: int = logging.INFO) -> None:
    try:
        count = await keys.sync()
        log.log(level, "API keys: %d from %s", count, keys.keys_file)
    except Unavailable as e:
        log.warning("API keys not synced: %s", e)
    except (OSError, ValueError) as e:
        log.error("API keys file unusable, keeping the keys in Redis: %s", e)


async def _sync_keys_forever(keys: ApiKeys, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await _sync_keys(keys, logging.DEBUG)


def runtime_credentials(config: GatewayConfig) -> grpc.ChannelCredentials | None:
    """TLS (and mTLS) credentials for the channels to runtimes; None: plaintext."""
    if config.runtime_tls_ca is None:
        return None
    cert = config.runtime_tls_cert.read_bytes() if config.runtime_tls_cert else None
    key = config.runtime_tls_key.read_bytes() if config.runtime_tls_key else None
    return grpc.ssl_channel_credentials(config.runtime_tls_ca.read_bytes(), key, cert)


def setup(daemon: Daemon, config: GatewayConfig) -> None:
    redis = RedisStore(
        config.redis,
        timeout_s=config.redis_timeout_s,
        retries=config.redis_retries,
        cluster=config.redis_cluster,
        max_connections=config.redis_max_connections,
        pool_timeout_s=config.redis_pool_timeout_s,
        tls=config.redis_tls(),
    )
    keys = ApiKeys(redis, config.api_keys_file, miss_sync_s=config.api_keys_miss_sync_s)
    discovery: Discovery = (
        DnsDiscovery(config.runtime_dns) if config.runtime_dns else StaticDiscovery(config.runtime)
    )
    pool = RuntimePool(
        discovery,
        refresh_s=config.runtime_refresh_s,
        timeout_s=config.runtime_timeout_s,
        max_message_bytes=config.max_message_bytes,
        credentials=runtime_credentials(config),
        token_file=config.runtime_token_file,
        keepalive_s=config.runtime_keepalive_s,
    )
    sessions = SessionStore(
        redis,
        lock_ttl_ms=int(config.session_lock_ttl_s * 1000),
        max_turns=config.max_session_turns,
    )
    limiter = RateLimiter(redis, config.rate_limit_rps, config.rate_limit_burst)
    failures = FailedAuthLimiter(redis, config.auth_failure_rps, config.auth_failure_burst)
    servicer = GatewayServicer(config, keys, limiter, sessions, pool, failures)
    daemon.add_service(Service("llmserve.v1.Gateway", servicer, add_gateway_to_server))
    tasks: list[asyncio.Task[None]] = []

    async def warmup() -> None:
        keys.load_file()  # a malformed keys file stops start-up here, naming the line
        if not await redis.ping():
            log.warning("Redis at %s unreachable: calls get UNAVAILABLE until up", redis.where)
        await _sync_keys(keys)
        await pool.refresh()
        log.info("%r: %d healthy", discovery, sum(s.available for s in pool.states))
        for state in pool.states:
            if not state.available:
                reason = state.last_error or "draining"
                log.warning("runtime %s not available: %s", state.address, reason)
        pool.start()
        if config.api_keys_file is not None:
            tasks.append(asyncio.create_task(_sync_keys_forever(keys, config.api_keys_sync_s)))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.stop()
        await redis.close()

    daemon.on_warmup(warmup)
    daemon.on_stop(stop)
    if config.http_port is not None:
        serve_http(daemon, config, servicer)  # after warm-up; drains before `stop`


def main(argv: Sequence[str] | None = None, prog: str = "python -m gateway") -> int:
    config = parse_config(GatewayConfig, argv, prog=prog, description=DESCRIPTION)
    return run_daemon("gateway", config, lambda daemon: setup(daemon, config))
