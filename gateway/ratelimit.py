"""A token bucket per API key, in Redis, shared by every gateway replica.

The bucket holds up to `burst` tokens and refills at `rate` tokens per second; each call
takes one. The whole check-and-take is one Lua script on Redis's clock (TIME), so replicas
with skewed clocks agree and two concurrent calls cannot take the same token.
"""

from __future__ import annotations

from gateway.redis_store import RedisStore, auth_failure_key, rate_limit_key
from llmserve.errors import ResourceExhausted
from llmserve.reasons import Reason

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst, cost (1 takes a token, 0 only looks).
# Returns {1, 0} when a token was there (and taken, at cost 1), {0, ms until one is} otherwise.
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)
local allowed, wait_ms = 0, 0
if tokens >= 1 then
  tokens = tokens - cost
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ms', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait_ms}
"""


class RateLimiter:
    """`check(key_hash)` raises ResourceExhausted (reason RATE_LIMITED, with the wait as a
    RetryInfo) when the key's bucket is empty. A rate of 0 turns limiting off."""

    def __init__(self, redis: RedisStore, rate: float, burst: int) -> None:
        self._redis = redis
        self.rate = rate
        self.burst = burst
        self._take = redis.client.register_script(TAKE)

    async def _wait_ms(self, key: str, cost: int) -> int:
        """0 if the bucket `key` had a token (taken when cost is 1), else ms until it has."""
        with self._redis.available("rate limits"):
            allowed, wait_ms = await self._take(keys=[key], args=[self.rate, self.burst, cost])
        return 0 if allowed else int(wait_ms)

    async def check(self, key_hash: str) -> None:
        if self.rate <= 0:
            return
        wait_ms = await self._wait_ms(rate_limit_key(key_hash[:32]), 1)
        if wait_ms:
            raise ResourceExhausted(
                f"rate limit exceeded: this API key may make {self.rate:g} requests per second"
                f" with bursts of {self.burst} (rate_limit_rps, rate_limit_burst); retry in"
                f" {wait_ms} ms",
                reason=Reason.RATE_LIMITED,
                retry_after_s=wait_ms / 1000,
            )


class FailedAuthLimiter(RateLimiter):
    """Failed authentications per peer address: each unknown or missing key takes a token of
    the peer's bucket; while it is empty every call from that address is refused before its
    key is looked at (so guessing cannot go faster, and a guess that would be right is not
    told apart). Behind a proxy the peer is the proxy: size the bucket for it."""

    async def check_peer(self, peer: str) -> None:
        if self.rate <= 0:
            return
        wait_ms = await self._wait_ms(auth_failure_key(peer), 0)
        if wait_ms:
            raise ResourceExhausted(
                f"too many failed authentications from this address: {self.rate:g} per second"
                f" with bursts of {self.burst} (auth_failure_rps, auth_failure_burst); retry in"
                f" {wait_ms} ms",
                reason=Reason.AUTH_FAILURES_LIMITED,
                retry_after_s=wait_ms / 1000,
            )

    async def failed(self, peer: str) -> None:
        if self.rate > 0:
            await self._wait_ms(auth_failure_key(peer), 1)


def peer_address(peer: str) -> str:
    """The address of a gRPC peer without its port: "ipv4:1.2.3.4:5678" -> "1.2.3.4"."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        rest = rest.rpartition(":")[0] or rest
        return rest.strip("[]")
    return peer[:100]  # unix:..., or something else: as it is, bounded
