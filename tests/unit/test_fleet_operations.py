"""The operations log (nexus.fleet.operations): states, conflicts, bounds, shutdown."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from nexus.fleet.errors import Conflict, OperationFailed
from nexus.fleet.operations import Operation, Operations, State
from tests.helpers import wait_until


async def done(op: Operation) -> Operation:
    await wait_until(lambda: op.done, what=op.describe())
    return op


def ops(keep: int = 100) -> Operations:
    ticks = itertools.count(1000)
    return Operations(keep, lambda: float(next(ticks)))


async def test_an_operation_runs_to_success_or_to_a_reason() -> None:
    log = ops()

    async def fine(op: Operation) -> None:
        op.step = "working"

    async def broken(op: Operation) -> None:
        raise OperationFailed("the box said no")

    async def buggy(op: Operation) -> None:
        raise KeyError("bug")

    good = log.start(Operation("load", "m", "a", 1.0), fine)
    bad = log.start(Operation("load", "m", "b", 1.0), broken)
    ugly = log.start(Operation("load", "m", "c", 1.0), buggy)
    assert good.state is State.PENDING
    await wait_until(lambda: good.done and bad.done and ugly.done, what="three done")
    assert good.state is State.SUCCEEDED and good.step == "" and good.reason == ""
    assert good.started_at is not None and good.finished_at is not None
    assert good.started_at < good.finished_at
    assert (bad.state, bad.reason) == (State.FAILED, "the box said no")
    assert ugly.state is State.FAILED and "internal error" in ugly.reason
    assert [op.id for op in log] == [ugly.id, bad.id, good.id]  # newest first
    assert log.get(bad.id) is bad and log.get("op-nope") is None


async def test_one_operation_at_a_time_per_model_and_backend() -> None:
    log = ops()
    gate = asyncio.Event()

    async def held(op: Operation) -> None:
        await gate.wait()

    migrating = log.start(Operation("migrate", "m", "b", 1.0, source="a"), held)
    for backend in ("a", "b"):
        with pytest.raises(Conflict, match=migrating.id):
            log.start(Operation("unload", "m", backend, 1.0), held)
    with pytest.raises(Conflict):
        log.start(Operation("load", "x", "a", 1.0, evict=("m",)), held)
    other = log.start(Operation("load", "other", "a", 1.0), held)  # another model: fine
    gate.set()
    await wait_until(lambda: migrating.done and other.done, what="both done")
    log.start(Operation("unload", "m", "a", 1.0), held)  # free again


async def test_the_log_keeps_running_ones_and_the_newest_finished() -> None:
    log = ops(keep=2)
    gate = asyncio.Event()

    async def held(op: Operation) -> None:
        await gate.wait()

    async def quick(op: Operation) -> None:
        return None

    running = log.start(Operation("load", "slow", "a", 1.0), held)
    finished = []
    for i in range(5):
        finished.append(await done(log.start(Operation("load", f"m{i}", "a", 1.0), quick)))
    assert [op.id for op in log] == [finished[4].id, finished[3].id, running.id]
    gate.set()
    await wait_until(lambda: running.done, what="the slow one done")
    assert [op.id for op in log] == [finished[4].id, running.id]  # m3 finished before it


async def test_stop_fails_what_still_runs() -> None:
    log = ops()

    async def forever(op: Operation) -> None:
        await asyncio.Event().wait()

    op = log.start(Operation("load", "m", "a", 1.0), forever)
    await wait_until(lambda: op.state is State.RUNNING, what="running")
    await log.stop()
    assert op.state is State.FAILED and op.reason == "Nexus stopped before it finished"
