"""The embedded state store: one SQLite file in WAL mode.

Why SQLite and no ORM: one file, in the standard library, safe for several processes on one
machine (WAL, a busy timeout), durable once a transaction commits. The schema is a few
tables, versioned with ``PRAGMA user_version`` and migrated forward at open.

Every call runs on one thread of our own (the connection never crosses threads), so the event
loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from nexus.errors import StartupError
from nexus.store import SpendRow

T = TypeVar("T")
BUSY_TIMEOUT_SECONDS = 5.0

# Entry i migrates from version i to i + 1 (its statements run in one transaction); never
# edit one that has shipped: add another.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
    CREATE TABLE spend (
        cycle TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (cycle, backend, model)
    )
    """,
    ),
)
ADD_SPEND = """
    INSERT INTO spend (cycle, backend, model, requests, prompt_tokens, completion_tokens, cost_usd)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (cycle, backend, model) DO UPDATE SET
        requests = requests + excluded.requests,
        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens,
        cost_usd = cost_usd + excluded.cost_usd
"""


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nexus-store")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        where = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"state store {where}: cannot open: {exc}") from None
        try:
            # WAL: readers and one writer at a time across processes; NORMAL sync: a commit
            # survives a crash of the process (not of the machine's power) and costs no fsync.
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise StartupError(f"state store {where}: cannot use WAL mode")
            db.execute("PRAGMA synchronous=NORMAL")
            self._migrate(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StartupError(f"state store {where}: {_explain(exc)}") from None
        self._db = db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this Nexus knows ({len(MIGRATIONS)})"
            )
        if version == len(MIGRATIONS):
            return
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._run(db.close)
        self._thread.shutdown(wait=True)

    # -- spend --------------------------------------------------------------------------------

    async def add_spend(self, rows: list[SpendRow]) -> None:
        if rows:
            await self._run(self._add_spend, rows)

    def _add_spend(self, rows: list[SpendRow]) -> None:
        db = self._connection()
        values = [
            (
                r.cycle,
                r.backend,
                r.model,
                r.requests,
                r.prompt_tokens,
                r.completion_tokens,
                r.cost_usd,
            )
            for r in rows
        ]
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(ADD_SPEND, values)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def spend(self, cycle: str) -> list[SpendRow]:
        rows: list[SpendRow] = await self._run(self._spend, cycle)
        return rows

    def _spend(self, cycle: str) -> list[SpendRow]:
        cursor = self._connection().execute(
            "SELECT cycle, backend, model, requests, prompt_tokens, completion_tokens, cost_usd"
            " FROM spend WHERE cycle = ? ORDER BY backend, model",
            (cycle,),
        )
        return [SpendRow(*row) for row in cursor]

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the state store is not open")
        return self._db


def _explain(exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return f"the file is not a SQLite database, or is damaged ({text}); move it away"
    if "locked" in text:
        return f"locked by another process for over {BUSY_TIMEOUT_SECONDS:g} s ({text})"
    return text
