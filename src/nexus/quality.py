"""Quality tracking (F16): rolling per model+backend profiles that feed routing.

Each (model, backend) pair keeps 5-minute buckets for the last 24 hours. A bucket holds
counts and a log-scale latency histogram, so percentiles over 1 h or 24 h come from merging
at most 288 small arrays and memory stays bounded however much traffic flows. Routing reads
a cheaper signal: an exponentially weighted error rate, which rises at once when a backend
starts failing and falls again as it succeeds (no permanent exclusion).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nexus.records import RequestRecord

BUCKET_SECONDS = 300
WINDOWS = {"1h": 3600, "24h": 86400}
MAX_BUCKETS = WINDOWS["24h"] // BUCKET_SECONDS
# Latency bins: 1 ms .. ~17 min, 10 % apart.
BINS = [0.001 * 1.1**i for i in range(int(math.log(1000 / 0.001, 1.1)) + 1)]
ERROR_EWMA_ALPHA = 0.2
# With no traffic (because it is deprioritised), a backend's error rate halves this often,
# so it is tried again instead of being excluded for good.
ERROR_HALF_LIFE_SECONDS = 30.0
# Below half a percentage point an error rate no longer moves the smart score (it is
# rounded to whole points there).
NEGLIGIBLE_ERROR_RATE = 0.005


@dataclass(slots=True)
class Bucket:
    start: int
    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(BINS) + 1))
    ttft_sum: float = 0.0
    ttft_count: int = 0
    tokens: int = 0
    generation_seconds: float = 0.0


@dataclass(slots=True)
class Profile:
    buckets: deque[Bucket] = field(default_factory=lambda: deque(maxlen=MAX_BUCKETS))
    error_rate: float = 0.0  # EWMA over requests, decaying with time: what routing reads
    updated: float = 0.0  # monotonic time of the last error_rate change

    def current_error_rate(self, now: float) -> float:
        if not self.error_rate:
            return 0.0
        decay: float = 0.5 ** ((now - self.updated) / ERROR_HALF_LIFE_SECONDS)
        return self.error_rate * decay

    def observe(self, failed: bool) -> None:
        now = time.monotonic()
        rate = self.current_error_rate(now)
        self.error_rate = rate + ERROR_EWMA_ALPHA * ((1.0 if failed else 0.0) - rate)
        self.updated = now

    def bucket(self, now: float) -> Bucket:
        start = int(now // BUCKET_SECONDS) * BUCKET_SECONDS
        if not self.buckets or self.buckets[-1].start != start:
            self.buckets.append(Bucket(start))
        return self.buckets[-1]

    def summary(self, seconds: int, now: float) -> dict[str, Any] | None:
        since = now - seconds
        chosen = [b for b in self.buckets if b.start + BUCKET_SECONDS > since]
        requests = sum(b.requests for b in chosen)
        if not requests:
            return None
        merged = [sum(col) for col in zip(*(b.latency for b in chosen), strict=True)]
        ttft_n = sum(b.ttft_count for b in chosen)
        ttft = sum(b.ttft_sum for b in chosen) / ttft_n * 1000 if ttft_n else None
        gen = sum(b.generation_seconds for b in chosen)
        return {
            "requests": requests,
            "error_rate": round(sum(b.errors for b in chosen) / requests, 4),
            "latency_ms": {f"p{q}": _percentile(merged, q / 100) for q in (50, 95, 99)},
            "ttft_ms": None if ttft is None else round(ttft, 3),
            "tokens_per_second": round(sum(b.tokens for b in chosen) / gen, 2) if gen else None,
        }


def _percentile(hist: list[int], q: float) -> float | None:
    total = sum(hist)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return round(BINS[min(i, len(BINS) - 1)] * 1000, 3)
    return None  # pragma: no cover


class QualityTracker:
    def __init__(self) -> None:
        self.profiles: dict[tuple[str, str], Profile] = {}
        # model -> backend -> profile, for the pairs that failed recently: routing looks
        # here once per decision instead of once per candidate backend.
        self.failing: dict[str, dict[str, Profile]] = {}

    def _profile(self, model: str, backend: str) -> Profile:
        profile = self.profiles.get((model, backend))
        if profile is None:
            profile = self.profiles[(model, backend)] = Profile()
        return profile

    def forget_backend(self, name: str) -> None:
        """A backend was removed: its profiles go too."""
        for key in [k for k in self.profiles if k[1] == name]:
            del self.profiles[key]
        for failing in self.failing.values():
            failing.pop(name, None)

    def failure(self, model: str, backend: str) -> None:
        """One attempt failed on ``backend`` (called per attempt, so failovers count too)."""
        profile = self._profile(model, backend)
        profile.observe(failed=True)
        self.failing.setdefault(model, {})[backend] = profile
        bucket = profile.bucket(time.time())
        bucket.requests += 1
        bucket.errors += 1

    def record(self, rec: RequestRecord) -> None:
        """Recorder sink for successes; failures were counted per attempt by failure()."""
        if not rec.backend or rec.status != 200 or rec.error_type:
            return
        profile = self.profiles.get((rec.routed_model, rec.backend))
        if profile is None:
            profile = self._profile(rec.routed_model, rec.backend)
        elif profile.error_rate:  # a success leaves 0 at 0 (``updated`` matters only above 0)
            profile.observe(failed=False)
        now = time.time()
        bucket = profile.buckets[-1] if profile.buckets else None
        if bucket is None or now - bucket.start >= BUCKET_SECONDS:  # (not: the newest one)
            bucket = profile.bucket(now)
        bucket.requests += 1
        bucket.latency[bisect_left(BINS, rec.duration_seconds)] += 1
        if rec.ttft_seconds is not None:
            bucket.ttft_sum += rec.ttft_seconds
            bucket.ttft_count += 1
        if rec.tokens_completion:
            bucket.tokens += rec.tokens_completion
            bucket.generation_seconds += rec.duration_seconds - (rec.ttft_seconds or 0.0)

    def error_rates(self, model: str, now: float) -> dict[str, float] | None:
        """Current error rates of ``model``'s backends that failed recently, or None if none
        did. A rate that decayed below NEGLIGIBLE_ERROR_RATE leaves the index."""
        failing = self.failing.get(model)
        if not failing:
            return None
        rates = {}
        for backend, profile in list(failing.items()):
            rate = profile.current_error_rate(now)
            if rate < NEGLIGIBLE_ERROR_RATE:
                del failing[backend]
            else:
                rates[backend] = rate
        return rates

    def stats(self) -> dict[str, Any]:
        now = time.time()
        out: dict[str, Any] = {}
        for (model, backend), profile in self.profiles.items():
            windows = {name: profile.summary(sec, now) for name, sec in WINDOWS.items()}
            if any(windows.values()):
                out.setdefault(model, {})[backend] = windows
        return out
