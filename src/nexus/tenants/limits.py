"""Per-tenant rate limits (F22): requests and tokens per minute, token buckets.

``Limiter`` is the seam: :class:`LocalLimiter` keeps the buckets in this process (one
Nexus); a shared store's limiter (Redis) decides for every replica at once, in one round trip.
A request takes one request token up front; its prompt and completion tokens are taken once
its usage is known, so a tenant can go into debt by one request, and waits it out.

The decision carries what OpenAI's clients read: ``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` and the same for tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from nexus.routing.limits import TokenBucket
from nexus.tenants.model import Tenant


@dataclass(slots=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds until it would be (when not allowed)
    exhausted: str = ""  # "requests" or "tokens" when not allowed
    limit_requests: int = 0  # 0: no request limit
    remaining_requests: int = 0
    reset_requests: float = 0.0  # seconds until the bucket is full again
    limit_tokens: int = 0  # 0: no token limit
    remaining_tokens: int = 0
    reset_tokens: float = 0.0

    def headers(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if self.limit_requests:
            out += [
                (b"x-ratelimit-limit-requests", str(self.limit_requests).encode()),
                (b"x-ratelimit-remaining-requests", str(self.remaining_requests).encode()),
                (b"x-ratelimit-reset-requests", duration(self.reset_requests)),
            ]
        if self.limit_tokens:
            out += [
                (b"x-ratelimit-limit-tokens", str(self.limit_tokens).encode()),
                (b"x-ratelimit-remaining-tokens", str(self.remaining_tokens).encode()),
                (b"x-ratelimit-reset-tokens", duration(self.reset_tokens)),
            ]
        return out


def duration(seconds: float) -> bytes:
    """As OpenAI writes it: "1s", "6m0s", "0.5s"."""
    if seconds < 60:
        return f"{max(0.0, round(seconds, 3)):g}s".encode()
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s".encode()


class Limiter(Protocol):
    async def acquire(self, tenant: Tenant) -> Decision:
        """Take one request from the tenant's budget now, or say when it could."""
        ...

    def spend_tokens(self, tenant: Tenant, tokens: int) -> None:
        """A request's tokens, once its usage is known."""
        ...


class LocalLimiter:
    """The buckets of this process (one Nexus, or a shared store that is unreachable)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[TokenBucket | None, TokenBucket | None]] = {}
        self._shapes: dict[str, tuple[int, int, int]] = {}

    def _of(self, tenant: Tenant) -> tuple[TokenBucket | None, TokenBucket | None]:
        shape = (tenant.rpm, tenant.burst, tenant.tpm)
        if self._shapes.get(tenant.name) != shape:  # new, or its limits were changed
            self._shapes[tenant.name] = shape
            requests = TokenBucket(tenant.rpm, tenant.burst) if tenant.rpm else None
            tokens = TokenBucket(tenant.tpm, tenant.tpm) if tenant.tpm else None
            self._buckets[tenant.name] = (requests, tokens)
        return self._buckets[tenant.name]

    async def acquire(self, tenant: Tenant) -> Decision:
        return self.acquire_now(tenant)

    def acquire_now(self, tenant: Tenant) -> Decision:
        requests, tokens = self._of(tenant)
        now = time.monotonic()
        decision = Decision(allowed=True)
        if tokens is not None:
            available = tokens.available(now)
            if available < 1:  # in debt from earlier answers
                return Decision(False, (1 - available) / tokens.rate, "tokens", **_shape(tenant))
        if requests is not None:
            if not requests.ready(now):
                wait = requests.wait_seconds(now)
                return Decision(False, wait, "requests", **_shape(tenant))
            requests.take(now)
            decision.limit_requests = tenant.rpm
            decision.remaining_requests = int(requests.tokens)
            decision.reset_requests = (requests.burst - requests.tokens) / requests.rate
        if tokens is not None:
            decision.limit_tokens = tenant.tpm
            decision.remaining_tokens = max(0, int(tokens.tokens))
            decision.reset_tokens = (tokens.burst - tokens.tokens) / tokens.rate
        return decision

    def spend_tokens(self, tenant: Tenant, tokens: int) -> None:
        bucket = self._of(tenant)[1]
        if bucket is not None and tokens > 0:
            bucket.available(time.monotonic())  # refill up to now first
            bucket.tokens -= tokens


def _shape(tenant: Tenant) -> dict[str, int]:
    return {"limit_requests": tenant.rpm, "limit_tokens": tenant.tpm}
