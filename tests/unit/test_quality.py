"""The error-rate index routing reads (only recent failures, dropped once negligible), and\nthe per-bucket profiles /v1/stats reads."""

from __future__ import annotations

import time
from unittest.mock import patch

import pytest

from nexus.quality import (
    BUCKET_SECONDS,
    ERROR_EWMA_ALPHA,
    ERROR_HALF_LIFE_SECONDS,
    QualityTracker,
)
from nexus.records import RequestRecord


def test_error_rates_hold_recent_failures_until_they_no_longer_count() -> None:
    quality = QualityTracker()
    now = time.monotonic()
    assert quality.error_rates("m", now) is None  # nothing failed: no per-backend lookups
    quality.failure("m", "a")
    rates = quality.error_rates("m", now)
    assert rates is not None and set(rates) == {"a"}
    assert rates["a"] == pytest.approx(ERROR_EWMA_ALPHA)  # one failure, from 0
    assert quality.error_rates("other-model", now) is None
    # Six half-lives: 0.2 decays to ~0.003, under half a point of the smart score.
    later = now + 6 * ERROR_HALF_LIFE_SECONDS
    assert quality.error_rates("m", later) == {}
    assert quality.error_rates("m", later) is None
    quality.failure("m", "a")  # a new failure puts it back
    assert set(quality.error_rates("m", time.monotonic()) or {}) == {"a"}


def test_successes_fill_the_bucket_of_their_time_and_windows_count_them() -> None:
    quality = QualityTracker()
    clock = [1_000_000 * BUCKET_SECONDS + 10.0]  # 10 s into a bucket

    def success(seconds: float) -> None:
        rec = RequestRecord("id", "chat", "m")
        rec.routed_model, rec.backend, rec.status = "m", "a", 200
        rec.duration_seconds, rec.tokens_completion = seconds, 10
        with patch("nexus.quality.time.time", return_value=clock[0]):
            quality.record(rec)

    success(0.1)
    clock[0] += BUCKET_SECONDS - 11  # the same bucket's last second
    success(0.1)
    clock[0] += 1  # the next bucket's first
    success(0.2)
    clock[0] += 2 * 3600  # two hours later: the first three are out of the 1 h window
    success(0.4)
    profile = quality.profiles[("m", "a")]
    assert [b.requests for b in profile.buckets] == [2, 1, 1]
    with patch("nexus.quality.time.time", return_value=clock[0]):
        stats = quality.stats()["m"]["a"]
    assert stats["1h"]["requests"] == 1 and stats["24h"]["requests"] == 4
    assert stats["1h"]["latency_ms"]["p50"] == pytest.approx(400, rel=0.1)
    assert stats["24h"]["latency_ms"]["p50"] == pytest.approx(100, rel=0.1)
    failed = RequestRecord("id", "chat", "m")
    failed.routed_model, failed.backend, failed.status = "m", "a", 502
    quality.record(failed)  # failures are counted per attempt, by failure()
    assert sum(b.requests for b in profile.buckets) == 4
