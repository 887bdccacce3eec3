"""The store callers' background loop: a failing run never ends it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from nexus.store import StoreUnavailable, every


async def test_every_keeps_running_through_failures(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise StoreUnavailable("Redis: ConnectionLost")  # logged by the store: quiet here
        if len(runs) == 2:
            raise OSError("disk full")

    task = asyncio.create_task(every(0.01, job, "writing things"))
    try:
        async with asyncio.timeout(5):
            while len(runs) < 4:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    messages = [r.getMessage() for r in caplog.records if r.name == "nexus.store"]
    assert messages == ["writing things failed; tried again in 0.01 s"]
