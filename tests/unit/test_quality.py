"""The error-rate index routing reads: only recent failures, dropped once negligible."""

from __future__ import annotations

import time

import pytest

from nexus.quality import ERROR_EWMA_ALPHA, ERROR_HALF_LIFE_SECONDS, QualityTracker


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
