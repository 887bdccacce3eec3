"""The budget's arithmetic and the SQLite state store, with injected time and real files."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nexus import tokens
from nexus.budget import HARD, NORMAL, SOFT, Budget, cycle_bounds
from nexus.config import BudgetConfig
from nexus.errors import StartupError
from nexus.records import RequestRecord
from nexus.registry import Backend
from nexus.routing.requirements import Requirements
from nexus.store import SpendRow
from nexus.store.sqlite import MIGRATIONS, SQLiteStore

JAN_15 = datetime(2027, 1, 15, 12, tzinfo=UTC)


def day(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "billing_day", "start", "end"),
    [
        (JAN_15, 1, day(2027, 1, 1), day(2027, 2, 1)),
        (day(2027, 1, 1), 1, day(2027, 1, 1), day(2027, 2, 1)),  # the first second is in
        (day(2027, 1, 1) - timedelta(seconds=1), 1, day(2026, 12, 1), day(2027, 1, 1)),
        (JAN_15, 20, day(2026, 12, 20), day(2027, 1, 20)),
        (day(2027, 2, 10), 31, day(2027, 1, 31), day(2027, 2, 28)),  # day 31, February
        (day(2027, 2, 28), 31, day(2027, 2, 28), day(2027, 3, 31)),
        (day(2028, 2, 28), 31, day(2028, 1, 31), day(2028, 2, 29)),  # leap year
        (day(2028, 2, 29), 30, day(2028, 2, 29), day(2028, 3, 30)),
        (day(2027, 4, 30), 31, day(2027, 4, 30), day(2027, 5, 31)),  # a 30-day month
        (day(2026, 12, 31), 31, day(2026, 12, 31), day(2027, 1, 31)),  # across the year
    ],
)
def test_billing_cycles(now: datetime, billing_day: int, start: datetime, end: datetime) -> None:
    assert cycle_bounds(now, billing_day) == (start, end)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def spend(cost: float, backend: str = "cloud", model: str = "gpt-4o") -> RequestRecord:
    record = RequestRecord(request_id="r", endpoint="chat", model=model, backend=backend)
    record.cost_usd, record.tokens_prompt, record.tokens_completion = cost, 10, 5
    return record


async def open_budget(
    path: Path, clock: Clock, limit: float = 10.0, **extra: object
) -> tuple[Budget, SQLiteStore]:
    store = SQLiteStore(path)
    await store.open()
    config = BudgetConfig(monthly_limit=limit, **extra)  # type: ignore[arg-type]
    budget = Budget(config, store, flush_seconds=60, clock=clock)
    await budget.start()
    return budget, store


async def test_spend_crosses_soft_then_hard_warning_once_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nexus.budget")
    budget, store = await open_budget(tmp_path / "n.db", Clock(JAN_15))
    try:
        statuses = []
        for _ in range(6):
            budget.charge(spend(2.0))
            statuses.append(budget.status())
        assert statuses == [NORMAL, NORMAL, NORMAL, SOFT, HARD, HARD]
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 2
        assert "soft limit crossed ($8.00 of $10.00" in warnings[0]
        assert "monthly limit reached ($10.00 of $10.00)" in warnings[1]
        assert "until 2027-02-01" in warnings[1]
        assert budget.headers() == [
            (b"x-nexus-budget-status", b"hard-limit"),
            (b"x-nexus-budget-remaining", b"0.0000"),
        ]
    finally:
        await budget.stop()
        await store.close()


async def test_spend_survives_a_restart_and_a_new_cycle_starts_from_zero(tmp_path: Path) -> None:
    clock = Clock(JAN_15)
    budget, store = await open_budget(tmp_path / "n.db", clock)
    budget.charge(spend(1.25))
    budget.charge(spend(0.5, model="o3"))
    await budget.stop()  # a clean stop writes what was buffered
    await store.close()
    budget, store = await open_budget(tmp_path / "n.db", clock)
    try:
        assert budget.spent == pytest.approx(1.75)
        stats = budget.stats()
        assert [(r["model"], r["requests"]) for r in stats["by_backend_model"]] == [
            ("gpt-4o", 1),
            ("o3", 1),
        ]
        assert stats["cycle_start"].startswith("2027-01-01")
        clock.now = day(2027, 2, 1)  # the cycle rolls over, restarts or not
        assert budget.spent == 0.0 and budget.status() == NORMAL
        budget.charge(spend(3.0))
        await budget.flush()
        assert [r.cost_usd for r in await store.spend("2027-02-01")] == [3.0]
        assert sum(r.cost_usd for r in await store.spend("2027-01-01")) == pytest.approx(1.75)
    finally:
        await budget.stop()
        await store.close()


async def test_two_budgets_on_one_file_add_up(tmp_path: Path) -> None:
    clock = Clock(JAN_15)
    one, store_one = await open_budget(tmp_path / "n.db", clock)
    two, store_two = await open_budget(tmp_path / "n.db", clock)
    try:
        one.charge(spend(1.0))
        two.charge(spend(2.0))
        await one.flush()
        await two.flush()
        await one.flush()  # reads the total both wrote
        assert one.spent == pytest.approx(3.0) and two.spent == pytest.approx(3.0)
    finally:
        for budget, store in ((one, store_one), (two, store_two)):
            await budget.stop()
            await store.close()


async def test_a_request_that_would_cross_the_limit_is_refused(tmp_path: Path) -> None:
    budget, store = await open_budget(tmp_path / "n.db", Clock(JAN_15), limit=1.0)
    try:
        cloud = Backend(name="cloud", url="https://api.openai.com", type="openai")
        from nexus.pricing import Price

        cloud.prices["m"] = Price(input_per_mtok=1000.0, output_per_mtok=1000.0)  # $0.001/token
        small = Requirements(model="m", prompt_tokens=100, max_tokens=100)  # ~$0.20
        huge = Requirements(model="m", prompt_tokens=100, max_tokens=2000)  # ~$2.10
        assert budget.refuses(cloud, "m", small) is None
        refused = budget.refuses(cloud, "m", huge)
        assert refused is not None and "would cross the monthly limit" in refused
        budget.charge(spend(1.0))
        assert "limit ($1.00) is reached" in (budget.refuses(cloud, "m", small) or "")
    finally:
        await budget.stop()
        await store.close()


async def test_the_prompt_is_counted_only_when_its_bound_would_not_fit(tmp_path: Path) -> None:
    """Far from the limit the prompt's byte size already fits: no tokenizing. Close to it,
    the exact count decides, so a request the bound would refuse but the count lets through
    still goes."""
    from nexus.pricing import Price
    from nexus.tokens import PromptCount

    budget, store = await open_budget(tmp_path / "n.db", Clock(JAN_15), limit=1.0)
    try:
        cloud = Backend(name="cloud", url="https://api.openai.com", type="openai")
        cloud.prices["gpt-4o"] = Price(input_per_mtok=100.0, output_per_mtok=100.0)
        body = {"messages": [{"role": "user", "content": "hello " * 300}]}  # ~300 tokens
        far = Requirements(model="gpt-4o", max_tokens=10)
        far.prompt_count = PromptCount(body)
        assert budget.refuses(cloud, "gpt-4o", far) is None
        assert far.prompt_tokens is None  # never counted

        budget.charge(spend(0.85))  # $0.15 left: the ~1,800-byte bound ($0.18) does not fit
        woken: list[bool] = []
        budget.wants_tokenizer = lambda: woken.append(True)
        with pytest.MonkeyPatch.context() as patch:  # the encoding still loading: the bound
            patch.setattr("nexus.tokens.loaded", lambda provider, model: False)
            near = Requirements(model="gpt-4o", max_tokens=10)
            near.prompt_count = PromptCount(body)
            refused = budget.refuses(cloud, "gpt-4o", near)
            assert refused is not None and "would cross" in refused
            assert woken == [True]  # and it is asked to load, once
        assert tokens.preload(["openai"])
        near = Requirements(model="gpt-4o", max_tokens=10)  # loaded: the exact count decides
        near.prompt_count = PromptCount(body)
        assert budget.refuses(cloud, "gpt-4o", near) is None
        count = near.prompt_count
        assert count.tokens_now("openai", "gpt-4o") is not None
        assert count.tokens("openai", "gpt-4o") < 700
        assert woken == [True]
    finally:
        await budget.stop()
        await store.close()


async def test_the_store_migrates_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    store = SQLiteStore(path)
    await store.open()
    await store.add_spend([SpendRow("2027-01-01", "b", "m", 1, 2, 3, 0.5)])
    await store.add_spend([SpendRow("2027-01-01", "b", "m", 1, 2, 3, 0.25)])
    assert await store.spend("2027-01-01") == [SpendRow("2027-01-01", "b", "m", 2, 4, 6, 0.75)]
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StartupError, match="newer than this Nexus knows"):
        await SQLiteStore(path).open()


async def test_a_corrupt_file_is_a_one_line_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    with pytest.raises(StartupError) as caught:
        await SQLiteStore(path).open()
    message = str(caught.value)
    assert str(path) in message and "not a SQLite database" in message
    assert "\n" not in message


def test_a_locked_file_is_a_one_line_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN EXCLUSIVE")  # another process holds it for writing
    try:
        from nexus.store import sqlite as sqlite_mod

        original = sqlite_mod.BUSY_TIMEOUT_SECONDS
        sqlite_mod.BUSY_TIMEOUT_SECONDS = 0.2
        try:
            with pytest.raises(StartupError, match="locked by another process"):
                asyncio.run(SQLiteStore(path).open())
        finally:
            sqlite_mod.BUSY_TIMEOUT_SECONDS = original
    finally:
        holder.execute("ROLLBACK")
        holder.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from nexus.store import SpendRow
    from nexus.store.sqlite import SQLiteStore

    async def main() -> None:
        store = SQLiteStore(Path(sys.argv[1]))
        await store.open()
        for i in range(200):
            await store.add_spend([SpendRow("2027-01-01", sys.argv[2], "m", 1, 1, 1, 0.01)])
        await store.close()

    asyncio.run(main())
    """
)


def test_two_processes_writing_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in ("a", "b")
    ]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute("SELECT backend, requests, round(cost_usd, 6) FROM spend").fetchall()
    assert sorted(rows) == [("a", 200, 2.0), ("b", 200, 2.0)]


@pytest.mark.timeout(30)
async def test_opening_a_new_file_while_another_process_writes_it_waits_for_the_lock(
    tmp_path: Path,
) -> None:
    # The switch to WAL upgrades a read lock; SQLite says "locked" at once, without waiting,
    # while another connection holds the write lock. Two replicas starting on one new file
    # met that (CI saw it): the store waits for the lock instead of refusing to start.
    path = tmp_path / "n.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE elsewhere (a)")
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, other.execute, "COMMIT")
    store = SQLiteStore(path)
    await store.open()
    await store.add_spend([SpendRow("2027-01-01", "a", "m", 1, 1, 1, 0.01)])
    assert [row.backend for row in await store.spend("2027-01-01")] == ["a"]
    await store.close()
    other.close()
