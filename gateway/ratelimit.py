"""A token bucket per API key, in Redis, shared by every gateway replica.

The bucket holds up to `burst` tokens and refills at `rate` tokens per second; each call
takes one. The whole check-and-take is one Lua script on Redis's clock (TIME), so replicas
with skewed clocks agree and two concurrent calls cannot take the same token.
"""

from __future__ import annotations

from gateway.redis_store import RedisStore, rate_limit_key
from llmserve.errors import ResourceExhausted

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst. Returns {1, 0} when a token was taken,
# {0, ms until one is available} otherwise.
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)
local allowed, wait_ms = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ms', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait_ms}
"""


class RateLimiter:
    """`check(key_hash)` raises ResourceExhausted with `retry-after-ms` trailing metadata when
    the key's bucket is empty. A rate of 0 turns limiting off."""

    def __init__(self, redis: RedisStore, rate: float, burst: int) -> None:
        self._redis = redis
        self.rate = rate
        self.burst = burst
        self._take = redis.client.register_script(TAKE)

    async def check(self, key_hash: str) -> None:
        if self.rate <= 0:
            return
        with self._redis.available("rate limits"):
            allowed, wait_ms = await self._take(
                keys=[rate_limit_key(key_hash[:32])], args=[self.rate, self.burst]
            )
        if not allowed:
            raise ResourceExhausted(
                f"rate limit exceeded: this API key may make {self.rate:g} requests per second"
                f" with bursts of {self.burst} (rate_limit_rps, rate_limit_burst); retry in"
                f" {wait_ms} ms",
                metadata=(("retry-after-ms", str(wait_ms)),),
            )
