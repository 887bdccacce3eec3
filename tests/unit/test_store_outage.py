"""The SQLite file failing (locked by another process, a full disk) is an outage like Redis
away: requests go on from memory, each failure is counted under its operation, the outage is
logged once when it starts and once when it ends (no traceback per retry), and what was
buffered meanwhile is written once the file works again."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.budget import Budget
from nexus.config import AuthConfig, BudgetConfig
from nexus.records import RequestRecord
from nexus.store import ERRORS, Outage, StoredDemand, StoreUnavailable
from nexus.store import sqlite as sqlite_store
from nexus.store.sqlite import SQLiteStore
from nexus.tenants.model import UsageRow
from nexus.tenants.service import Tenants
from tests.helpers import wait_until

FLUSH = 0.02
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # A write waits this long for another process's lock before it fails (5 s in production).
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", 0.05)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="nexus")
    yield caplog


def served(cost: float = 0.5) -> RequestRecord:
    record = RequestRecord("r", "chat", tenant="team", model="m", backend="cloud")
    record.cost_usd, record.tokens_prompt, record.tokens_completion = cost, 10, 5
    return record


def store_lines(logs: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in logs.records if r.name == "nexus.store"]


async def running(path: Path, flush: float) -> tuple[SQLiteStore, Budget, Tenants]:
    """The store, and its two callers with their flush loops running (as ``nexus serve``)."""
    store = SQLiteStore(path)
    await store.open()
    budget = Budget(BudgetConfig(monthly_limit=100.0), store, flush_seconds=flush)
    tenants = Tenants(AuthConfig(enabled=True), store, flush_seconds=flush, cycle_day=1)
    await budget.start()
    await tenants.start()
    return store, budget, tenants


async def test_a_locked_file_is_one_outage_requests_go_on_and_nothing_is_lost(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nexus.db"
    store, budget, tenants = await running(path, FLUSH)
    before = Counter(ERRORS)
    try:
        await tenants.create({"name": "team"})
        # Another process holds the write lock for longer than the busy timeout: every write
        # fails ("database is locked"), reads still answer (WAL).
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            for _ in range(3):  # requests served meanwhile: their sinks need no store
                record = served()
                budget.charge(record)
                tenants.record(record)

            def retried() -> bool:  # each loop tried several times, and failed
                return (
                    ERRORS["add_usage"] >= before["add_usage"] + 3
                    and ERRORS["add_spend"] >= before["add_spend"] + 3
                )

            await wait_until(retried, timeout=10, what="flushes failing on the locked file")
            assert budget.spent == pytest.approx(1.5)  # quotas and budget: from memory
            assert tenants.summary()["team"]["tokens"] == 45
            with pytest.raises(StoreUnavailable) as refused:
                await tenants.create({"name": "late"})  # the admin's change: try again
            assert refused.value.status == 503
            await StoredDemand(store).save({"models": {}})  # the fleet's loop gets no error
        finally:
            holder.execute("ROLLBACK")
            holder.close()

        async def written() -> bool:
            usage = await store.usage(None, "2000-01-01")
            spend = await store.spend(budget.cycle)
            return [r.requests for r in usage] == [3] and [r.requests for r in spend] == [3]

        await wait_until(written, timeout=10, what="the buffered usage and spend written")
        await wait_until(lambda: len(store_lines(logs)) == 2, timeout=5, what="the recovery")
    finally:
        await tenants.stop()
        await budget.stop()
        await store.close()

    # Counted under each operation's name (not the store's helper that ran it).
    assert set(Counter(ERRORS) - before) == {
        "add_usage",
        "add_spend",
        "create_tenant",
        "save_demand",
    }
    # One line when the outage started, one when it ended: reads that kept working (the
    # version polled every second) did not end it; no traceback, no line per retry.
    (level, started), (level_back, ended) = store_lines(logs)
    assert level == "WARNING" and f"the SQLite file {path} fails (database is locked)" in started
    assert level_back == "INFO" and ended == f"state store: the SQLite file {path} works again"
    assert not [r for r in logs.records if r.exc_info or "failed; tried again" in r.getMessage()]


async def test_a_full_disk_fails_a_write_whole_and_the_next_one_works(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """SQLite rolls a transaction back itself when the disk is full: the store says so (not
    "cannot rollback"), and its connection is not left inside a transaction."""
    store = SQLiteStore(tmp_path / "nexus.db")
    await store.open()

    def limit(pages: int | None) -> int:  # on the store's thread, with its connection
        db = store._connection()
        if pages is not None:
            db.execute(f"PRAGMA max_page_count = {pages}")
        return int(db.execute("PRAGMA page_count").fetchone()[0])

    try:
        await store._on_thread(limit, await store._on_thread(limit, None))  # no room to grow
        rows = [UsageRow("team", "2027-01-01", f"model-{i}-" + "x" * 200, 1) for i in range(200)]
        with pytest.raises(StoreUnavailable, match=r"database or disk is full"):
            await store.add_usage(rows)
        await store._on_thread(limit, 1_000_000)  # room again
        await store.add_usage(rows)
        stored = await store.usage(None, "2027-01-01")
        assert len(stored) == 200 and {r.requests for r in stored} == {1}  # nothing twice
    finally:
        await store.close()
    (level, started), (level_back, _) = store_lines(logs)
    assert level == "WARNING" and "(database or disk is full)" in started
    assert level_back == "INFO"


def test_an_outage_of_writes_is_not_ended_by_reads(logs: pytest.LogCaptureFixture) -> None:
    outage = Outage("the thing", "fails", "works again")
    for _ in range(3):
        outage.failed("add_usage", "locked")
        outage.worked("version")  # a read: still answering
        outage.worked("tenants")
    assert outage.down
    outage.failed("usage", "locked")  # reads too now
    outage.worked("add_usage")
    assert outage.down  # reads still failing
    outage.worked("usage")
    assert not outage.down
    assert store_lines(logs) == [
        (
            "WARNING",
            "state store: the thing fails (locked): serving from what this process "
            "knows; writes are kept until it is back",
        ),
        ("INFO", "state store: the thing works again"),
    ]


async def test_a_stop_while_the_file_fails_says_what_was_not_written(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "nexus.db"
    store, budget, tenants = await running(path, 60)
    await tenants.create({"name": "team"})
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        record = served()
        budget.charge(record)
        tenants.record(record)
        await budget.stop()  # the rest of the shutdown goes on
        await tenants.stop()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await store.close()
    errors = [r.getMessage() for r in logs.records if r.levelname == "ERROR"]
    assert errors == [
        "budget: spend not written at shutdown (1 rows): the state store is away",
        "usage not written at shutdown (1 rows): the state store is away",
    ]
