"""Per-tenant rate limits shared by every replica: the token buckets live in Redis.

One Lua script refills and takes from a tenant's buckets atomically, on Redis' clock, in one
round trip per request, so N replicas together admit what one would (at most the burst plus
the rate). The same arithmetic as :class:`~nexus.tenants.limits.LocalLimiter`: a request
takes one request token; its tokens are taken once its usage is known (``spend_tokens``,
sent without waiting).

Redis away or slow: this replica decides alone with its own buckets (the documented
degraded mode), and tries Redis again a second later, so a hung Redis costs one request at
most ``TIMEOUT_SECONDS``, not every request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nexus.store import StoreUnavailable
from nexus.store.redis import PREFIX, RedisStore
from nexus.tenants.limits import Decision, LocalLimiter
from nexus.tenants.model import Tenant

RETRY_SECONDS = 1.0  # after a failure, how long this replica decides alone

# A bucket is a hash {t: tokens, at: last refill (Redis TIME, seconds)}; absent = full.
_LEVEL = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local function level(key, rate, cap)
  local v = redis.call('HMGET', key, 't', 'at')
  local tokens = tonumber(v[1])
  if tokens == nil then return cap end
  local at = tonumber(v[2])
  if now > at then tokens = math.min(cap, tokens + (now - at) * rate) end
  return tokens
end
local function store(key, tokens, rate, cap)
  redis.call('HSET', key, 't', tostring(tokens), 'at', tostring(now))
  redis.call('EXPIRE', key, math.ceil((cap - tokens) / rate) + 1)
end
"""

# KEYS: requests bucket, tokens bucket. ARGV: rpm, burst (already defaulted), tpm.
# -> {1, remaining requests, remaining tokens} or {0, "requests"|"tokens", retry after}
ACQUIRE = (
    _LEVEL
    + """
local rpm, burst, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tok = 0
if tpm > 0 then
  tok = level(KEYS[2], tpm / 60, tpm)
  if tok < 1 then return {0, 'tokens', tostring((1 - tok) / (tpm / 60))} end
end
local req = 0
if rpm > 0 then
  req = level(KEYS[1], rpm / 60, burst)
  if req < 1 then return {0, 'requests', tostring((1 - req) / (rpm / 60))} end
  req = req - 1
  store(KEYS[1], req, rpm / 60, burst)
end
return {1, tostring(req), tostring(tok)}
"""
)

# KEYS: tokens bucket. ARGV: tpm, tokens used.
SPEND = (
    _LEVEL
    + """
local tpm, used = tonumber(ARGV[1]), tonumber(ARGV[2])
store(KEYS[1], level(KEYS[1], tpm / 60, tpm) - used, tpm / 60, tpm)
return 1
"""
)


class RedisLimiter:
    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.local = LocalLimiter()
        self._acquire = store.client.script(ACQUIRE)
        self._spend = store.client.script(SPEND)
        self._alone_until = 0.0
        self._sending: set[asyncio.Task[None]] = set()

    def _shared(self) -> bool:
        return time.monotonic() >= self._alone_until

    def _failed(self) -> None:
        self._alone_until = time.monotonic() + RETRY_SECONDS

    async def acquire(self, tenant: Tenant) -> Decision:
        if not (tenant.rpm or tenant.tpm):
            return Decision(True)
        if not self._shared():
            return self.local.acquire_now(tenant)
        burst = tenant.burst or max(1, round(tenant.rpm))
        keys = [f"{PREFIX}rl:{tenant.name}:requests", f"{PREFIX}rl:{tenant.name}:tokens"]
        try:
            reply: list[Any] = await self.store.call(
                "rate_limit",
                lambda: self.store.client.run(self._acquire, keys, [tenant.rpm, burst, tenant.tpm]),
            )
        except StoreUnavailable:
            self._failed()
            return self.local.acquire_now(tenant)
        if not int(reply[0]):
            return Decision(
                False,
                float(reply[2]),
                reply[1].decode(),
                limit_requests=tenant.rpm,
                limit_tokens=tenant.tpm,
            )
        requests, tokens = float(reply[1]), float(reply[2])
        return Decision(
            True,
            remaining_requests=int(requests),
            reset_requests=(burst - requests) * 60 / tenant.rpm if tenant.rpm else 0.0,
            remaining_tokens=max(0, int(tokens)),
            reset_tokens=(tenant.tpm - tokens) * 60 / tenant.tpm if tenant.tpm else 0.0,
            limit_requests=tenant.rpm,
            limit_tokens=tenant.tpm,
        )

    def spend_tokens(self, tenant: Tenant, tokens: int) -> None:
        if not tenant.tpm or tokens <= 0:
            return
        if not self._shared():
            self.local.spend_tokens(tenant, tokens)
            return
        task = asyncio.get_running_loop().create_task(self._send_spend(tenant, tokens))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_spend(self, tenant: Tenant, tokens: int) -> None:
        key = f"{PREFIX}rl:{tenant.name}:tokens"
        try:
            await self.store.call(
                "rate_limit",
                lambda: self.store.client.run(self._spend, [key], [tenant.tpm, tokens]),
            )
        except StoreUnavailable:
            self._failed()
            self.local.spend_tokens(tenant, tokens)
