"""Per-backend rate limits (F22): a token bucket per backend.

The bucket holds up to ``burst`` tokens and gains ``requests_per_minute / 60`` a second; a
request sent to the backend takes one. A backend whose bucket is empty is skipped like a busy
one: another backend serves, or the request waits in the queue, or (queue off) gets a 429
saying when the next token comes.
"""

from __future__ import annotations

import time


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, requests_per_minute: float, burst: int = 0) -> None:
        self.rate = requests_per_minute / 60.0  # tokens a second
        self.burst = float(burst or max(1, round(requests_per_minute)))
        self.tokens = self.burst
        self.updated = time.monotonic()

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def ready(self, now: float) -> bool:
        """A token is there for a request now."""
        if self.tokens >= 1.0:
            return True
        self._refill(now)
        return self.tokens >= 1.0

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0

    def wait_seconds(self, now: float) -> float:
        """How long until a token is there (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate
