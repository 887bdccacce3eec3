"""The embedded state store: one SQLite file in WAL mode.

Why SQLite and no ORM: one file, in the standard library, safe for several processes on one
machine (WAL, a busy timeout), durable once a transaction commits. The schema is a few
tables, versioned with ``PRAGMA user_version`` and migrated forward at open.

Every call runs on one thread of our own (the connection never crosses threads), so the event
loop never waits on the disk. A call that fails (the file locked by another process for longer
than the busy timeout, a full disk, an I/O error) is an outage like Redis away: counted, logged
once when it starts and once when it ends (``nexus.store.Outage``), raised as
``StoreUnavailable`` for the caller to keep what it holds and try again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path
from typing import Any, TypeVar

import orjson

from nexus.errors import NotFound, StartupError
from nexus.store import SUMS, Outage, SpendRow
from nexus.tenants.model import ApiKey, Tenant, UsageRow

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
    (
        """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL
    )
    """,
        """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
        hash TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL,
        revoked INTEGER NOT NULL DEFAULT 0
    )
    """,
        """
    CREATE TABLE usage (
        tenant TEXT NOT NULL,
        day TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, day, model)
    )
    """,
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('tenants_version', 0)",
    ),
    (
        """
    CREATE TABLE demand (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        snapshot TEXT NOT NULL
    )
    """,
    ),
)
# A version every process polls ('tenants_version', 'usage_version'), made at its first bump.
BUMP = """
    INSERT INTO meta (key, value) VALUES (?, 1)
    ON CONFLICT (key) DO UPDATE SET value = value + 1
"""
VERSION = "SELECT value FROM meta WHERE key = ?"


def adding(table: str, names: tuple[str, str, str]) -> str:
    """The upsert that adds a row (:class:`~nexus.store.Sums`) to the sums of its names."""
    columns = (*names, *SUMS)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({', '.join(names)}) DO UPDATE SET "
        + ", ".join(f"{column} = {column} + excluded.{column}" for column in SUMS)
    )


ADD_SPEND = adding("spend", ("cycle", "backend", "model"))
ADD_USAGE = adding("usage", ("tenant", "day", "model"))


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nexus-store")
        self.outage = Outage(f"the SQLite file {path}", "fails", "works again")

    async def _run(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the store's thread; a failure of the file is the outage's."""
        try:
            result = await self._on_thread(fn, *args)
        except sqlite3.IntegrityError:
            raise  # a caller's mistake (checked by it), not the store failing
        except sqlite3.Error as exc:  # a full disk, a file locked too long, an I/O error
            raise self.outage.failed(operation, str(exc)) from exc
        self.outage.worked(operation)
        return result

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        await self._on_thread(self._open)  # (each failure is a StartupError, in one line)

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
            if _journal_wal(db) != "wal":
                raise StartupError(f"state store {where}: cannot use WAL mode")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
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
        with transaction(db):  # one process migrates; the others wait, then see it
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._on_thread(db.close)
        self._thread.shutdown(wait=True)

    # -- spend --------------------------------------------------------------------------------

    async def add_spend(self, rows: list[SpendRow]) -> None:
        if rows:
            await self._run("add_spend", self._add, ADD_SPEND, rows, None)

    def _add(self, sql: str, rows: list[SpendRow] | list[UsageRow], bump: str | None) -> None:
        """Rows added to their sums in one transaction (and a version bumped with them)."""
        db = self._connection()
        values = [astuple(row) for row in rows]  # (the columns' order)
        with transaction(db):
            db.executemany(sql, values)
            if bump is not None:
                db.execute(BUMP, (bump,))

    async def spend(self, cycle: str) -> list[SpendRow]:
        return await self._run("spend", self._spend, cycle)

    def _spend(self, cycle: str) -> list[SpendRow]:
        cursor = self._connection().execute(
            "SELECT cycle, backend, model, requests, prompt_tokens, completion_tokens, cost_usd"
            " FROM spend WHERE cycle = ? ORDER BY backend, model",
            (cycle,),
        )
        return [SpendRow(*row) for row in cursor]

    # -- tenants and keys -------------------------------------------------------------------

    async def version(self) -> int:
        value: int = await self._run("version", self._one, VERSION, "tenants_version")
        return value

    def _one(self, sql: str, *args: Any) -> Any:
        row = self._connection().execute(sql, args).fetchone()
        return None if row is None else row[0]

    async def tenants(self) -> tuple[list[Tenant], list[ApiKey]]:
        return await self._run("tenants", self._tenants)

    def _tenants(self) -> tuple[list[Tenant], list[ApiKey]]:
        db = self._connection()
        tenants = [
            Tenant(**orjson.loads(definition))
            for (definition,) in db.execute("SELECT definition FROM tenants ORDER BY name")
        ]
        keys = [
            ApiKey(key_id, tenant, digest, created, expires, bool(revoked))
            for key_id, tenant, digest, created, expires, revoked in db.execute(
                "SELECT id, tenant, hash, created, expires, revoked FROM keys ORDER BY created"
            )
        ]
        return tenants, keys

    async def create_tenant(self, tenant: Tenant) -> bool:
        # (The name is the primary key: of two processes creating one name, one inserts.)
        return await self._run(
            "create_tenant",
            self._write,
            "INSERT INTO tenants (name, definition) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (tenant.name, orjson.dumps(tenant.to_dict()).decode()),
        )

    async def put_tenant(self, tenant: Tenant) -> None:
        await self._run(
            "put_tenant",
            self._write,
            "INSERT INTO tenants (name, definition) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET definition = excluded.definition",
            (tenant.name, orjson.dumps(tenant.to_dict()).decode()),
        )

    async def delete_tenant(self, name: str) -> bool:
        return await self._run(
            "delete_tenant", self._write, "DELETE FROM tenants WHERE name = ?", (name,)
        )

    async def put_key(self, key: ApiKey) -> None:
        try:
            await self._run(
                "put_key",
                self._write,
                "INSERT INTO keys (id, tenant, hash, created, expires, revoked)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key.id, key.tenant, key.hash, key.created, key.expires, int(key.revoked)),
            )
        except sqlite3.IntegrityError:  # the tenant is gone (another process deleted it)
            raise NotFound(f"no tenant '{key.tenant[:64]}'") from None

    async def revoke_key(self, key_id: str) -> bool:
        return await self._run(
            "revoke_key",
            self._write,
            "UPDATE keys SET revoked = 1 WHERE id = ? AND revoked = 0",
            (key_id,),
        )

    def _write(self, sql: str, args: tuple[Any, ...]) -> bool:
        """One change to tenants or keys, and the version bump every process polls."""
        db = self._connection()
        with transaction(db):
            changed = db.execute(sql, args).rowcount > 0
            if changed:
                db.execute(BUMP, ("tenants_version",))
        return changed

    # -- usage --------------------------------------------------------------------------------

    async def add_usage(self, rows: list[UsageRow]) -> None:
        if rows:
            await self._run("add_usage", self._add, ADD_USAGE, rows, "usage_version")

    async def usage_version(self) -> int:
        value: int | None = await self._run("usage_version", self._one, VERSION, "usage_version")
        return value or 0  # (no usage written yet)

    async def usage(self, tenant: str | None, since: str) -> list[UsageRow]:
        return await self._run("usage", self._usage, tenant, since)

    def _usage(self, tenant: str | None, since: str) -> list[UsageRow]:
        sql = (
            "SELECT tenant, day, model, requests, prompt_tokens, completion_tokens, cost_usd"
            " FROM usage WHERE day >= ?"
        )
        args: tuple[str, ...] = (since,)
        if tenant is not None:
            sql += " AND tenant = ?"
            args += (tenant,)
        cursor = self._connection().execute(sql + " ORDER BY tenant, day, model", args)
        return [UsageRow(*row) for row in cursor]

    # -- fleet demand ---------------------------------------------------------------------

    async def load_demand(self) -> dict[str, Any] | None:
        raw = await self._run("load_demand", self._one, "SELECT snapshot FROM demand WHERE id = 1")
        return None if raw is None else dict(orjson.loads(raw))

    async def save_demand(self, snapshot: dict[str, Any]) -> None:
        await self._run("save_demand", self._save_demand, orjson.dumps(snapshot).decode())

    def _save_demand(self, text: str) -> None:
        self._connection().execute(
            "INSERT INTO demand (id, snapshot) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot",
            (text,),
        )

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the state store is not open")
        return self._db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any failure, the commit's too (a full
    disk may refuse it), unless SQLite already did (it may, after a full disk or an I/O
    error): the connection is never left inside a transaction that every later write would
    trip on."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _journal_wal(db: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode=WAL``, tried again while another process holds the file.

    The switch upgrades a read lock to an exclusive one, and SQLite answers "locked" at once,
    without its busy handler, when another connection is between the two (it would deadlock
    otherwise): two processes opening a new file together meet that. The switch is made once
    per file, so waiting here costs nothing afterwards."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            mode: str = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            return mode.lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _explain(exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return f"the file is not a SQLite database, or is damaged ({text}); move it away"
    if "locked" in text:
        return f"locked by another process for over {BUSY_TIMEOUT_SECONDS:g} s ({text})"
    return text
