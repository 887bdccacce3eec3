"""A small run of the soak script, so it cannot rot (the real run is 50,000 requests)."""

from __future__ import annotations

import pytest

from benchmarks import soak


@pytest.mark.timeout(120)
async def test_soak_smoke() -> None:
    result = await soak.soak(600, 16, 0.5, 3)
    assert result.requests == 600
    assert result.server_errors == 0, result.statuses
    assert result.flaps >= 1 and result.disconnects >= 1
    assert result.pending_after == {"steady": 0, "flappy": 0} and result.in_flight_after == 0
    assert len(result.rss_mb_by_tenth) == 10
