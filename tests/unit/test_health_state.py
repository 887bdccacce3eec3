"""F03's state machine, table-driven."""

from __future__ import annotations

import pytest

from nexus.config import HealthCheckConfig
from nexus.health import next_status
from nexus.registry import BackendStatus as S

CFG = HealthCheckConfig(failure_threshold=3, recovery_threshold=2)


def run(start: S, results: list[bool]) -> list[S]:
    status, ok_run, fail_run, seen = start, 0, 0, []
    for ok in results:
        ok_run, fail_run = (ok_run + 1, 0) if ok else (0, fail_run + 1)
        status = next_status(status, ok, ok_run, fail_run, CFG)
        seen.append(status)
    return seen


@pytest.mark.parametrize(
    ("start", "results", "expected"),
    [
        (S.UNKNOWN, [True], [S.HEALTHY]),
        (S.UNKNOWN, [False], [S.UNHEALTHY]),
        (S.HEALTHY, [False, False, False], [S.HEALTHY, S.HEALTHY, S.UNHEALTHY]),
        (S.HEALTHY, [False, False, True, False, False], [S.HEALTHY] * 5),
        (S.UNHEALTHY, [True, True], [S.UNHEALTHY, S.HEALTHY]),
        (S.UNHEALTHY, [True, False, True], [S.UNHEALTHY] * 3),
        (S.DRAINING, [True, False], [S.DRAINING, S.DRAINING]),
    ],
)
def test_transitions(start: S, results: list[bool], expected: list[S]) -> None:
    assert run(start, results) == expected
