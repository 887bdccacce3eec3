"""The state store: what Nexus keeps across restarts and shares between replicas.

One interface, :class:`Store`, for every feature that keeps state: cloud spend (the budget),
tenants, their keys and their usage (auth). The embedded default is a SQLite file
(``sqlite.py``); the interface is async and coarse (a batch of rows in, totals out) so that
another engine, such as Redis for several replicas, fits behind it without touching callers.

Callers never make a request wait on the store: they buffer what they write and flush it
from their own background task (about once a second), and they keep in memory what the
request path reads, refreshed after each flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nexus.config import StorageConfig
from nexus.errors import ServiceUnavailable

if TYPE_CHECKING:  # (the tenants' model builds its usage rows on Sums, below)
    from nexus.tenants.model import ApiKey, Tenant, UsageRow

log = logging.getLogger("nexus.store")

ERRORS: Counter[str] = Counter()  # operation -> failures (nexus_store_errors_total)
# The operations that only read. A SQLite file that is locked by another process or full
# still answers them while every write fails: an outage of writes ends with a write.
READS = frozenset({"spend", "version", "usage_version", "tenants", "usage", "load_demand"})


class StoreUnavailable(ServiceUnavailable):
    """The store could not be reached or written (Redis away, the SQLite file locked, full or
    failing). Already counted and logged by the store: callers keep what they hold and retry
    on their next flush; an admin's change through the API is a 503 to try again."""

    code = "store_unavailable"


def count_error(operation: str) -> None:
    ERRORS[operation] += 1


class Outage:
    """Whether a store is failing, for both engines: each failure is counted under its
    operation's name (``nexus_store_errors_total{operation}``); one warning when an outage
    starts, one info line when it ends, nothing in between (the background loops that
    retry every second stay quiet).

    An outage ends when what failed works again: reads (:data:`READS`) and writes are told
    apart, so reads still answered by a locked file do not end an outage of its writes
    (which would log it starting and ending at every flush)."""

    def __init__(self, subject: str, failing: str, back: str) -> None:
        self.subject = subject  # "Redis at redis://host:6379/0", "the SQLite file /x.db"
        self.failing = failing  # "is unreachable"
        self.back = back  # "is reachable again"
        self.kinds: set[bool] = set()  # failing now: True for reads, False for writes

    @property
    def down(self) -> bool:
        return bool(self.kinds)

    def failed(self, operation: str, reason: str) -> StoreUnavailable:
        """Count and (at the start of an outage) log a failure; the error to raise."""
        count_error(operation)
        if not self.kinds:
            log.warning(
                "state store: %s %s (%s): serving from what this process knows; writes are "
                "kept until it is back",
                self.subject,
                self.failing,
                reason,
            )
        self.kinds.add(operation in READS)
        return StoreUnavailable(f"the state store is unavailable ({reason}); try again")

    def worked(self, operation: str) -> None:
        """An operation succeeded: the end of the outage once every kind that failed works."""
        if self.kinds:
            self.kinds.discard(operation in READS)
            if not self.kinds:
                log.info("state store: %s %s", self.subject, self.back)


async def every(seconds: float, job: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``job`` every ``seconds``, for ever (a background task of a store's caller). A
    failure never ends it: an unreachable store was logged by the store (once per outage)
    and the caller keeps what it holds for the next run; anything else is logged here."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except StoreUnavailable:
            pass
        except Exception:
            log.warning("%s failed; tried again in %g s", what, seconds, exc_info=True)


SUMS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


class Sums:
    """What a row of spend or usage adds up, after its three names (``SpendRow``: cycle,
    backend, model; ``UsageRow``: tenant, day, model). Both engines store either kind the
    same way: a row's fields in order are its columns, and several writers add to the sums
    at once."""

    __slots__ = ()

    def add(self, other: Sums) -> None:
        for name in SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class SpendRow(Sums):
    """Cloud spend of one billing cycle, one backend and one model (added up)."""

    cycle: str  # the cycle's first day, YYYY-MM-DD
    backend: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class Store(Protocol):
    async def open(self) -> None:
        """Create or migrate; raises StartupError with a one-line reason."""
        ...

    async def close(self) -> None: ...

    async def add_spend(self, rows: list[SpendRow]) -> None:
        """Add the rows to what is stored (several writers may add at once)."""
        ...

    async def spend(self, cycle: str) -> list[SpendRow]:
        """Every row of a cycle, as all writers added them up."""
        ...

    # -- tenants and keys (changes bump a version every process polls) -------------------

    async def version(self) -> int:
        """A number that changes whenever a tenant or key does (cheap: polled every second)."""
        ...

    async def tenants(self) -> tuple[list[Tenant], list[ApiKey]]: ...

    async def create_tenant(self, tenant: Tenant) -> bool:
        """Create, in one step: False (and nothing changed) if a tenant of that name exists,
        even one another process created a moment ago."""
        ...

    async def put_tenant(self, tenant: Tenant) -> None:
        """Create or replace."""
        ...

    async def delete_tenant(self, name: str) -> bool:
        """The tenant and its keys; False if there was none."""
        ...

    async def put_key(self, key: ApiKey) -> None: ...

    async def revoke_key(self, key_id: str) -> bool: ...

    # -- usage --------------------------------------------------------------------------------

    async def add_usage(self, rows: list[UsageRow]) -> None:
        """Add the rows to what is stored (several writers may add at once); bumps
        :meth:`usage_version`."""
        ...

    async def usage_version(self) -> int:
        """A number that changes whenever any process adds usage (cheap: polled at every
        flush, so that the totals are read again only when they may have changed)."""
        ...

    async def usage(self, tenant: str | None, since: str) -> list[UsageRow]:
        """Rows from day ``since`` (YYYY-MM-DD) on, of one tenant or all."""
        ...

    # -- fleet demand -------------------------------------------------------------------------

    async def load_demand(self) -> dict[str, Any] | None:
        """The fleet's demand history as last saved (None: never saved)."""
        ...

    async def save_demand(self, snapshot: dict[str, Any]) -> None:
        """Replace the fleet's demand history (a plain JSON-able snapshot)."""
        ...


@dataclass(slots=True)
class StoredDemand:
    """The fleet's DemandStore (``nexus.fleet.demand``) on the state store."""

    store: Store

    async def load(self) -> dict[str, Any] | None:
        return await self.store.load_demand()

    async def save(self, snapshot: dict[str, Any]) -> None:
        with contextlib.suppress(StoreUnavailable):  # logged by the store; saved next pass
            await self.store.save_demand(snapshot)


def default_path() -> Path:
    """$XDG_DATA_HOME/nexus/nexus.db, else ~/.local/share/nexus/nexus.db."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(base) / "nexus" / "nexus.db"


def open_store(config: StorageConfig) -> Store:
    """The store the config names (not opened yet): Redis when ``url`` is set (imported only
    then), else the SQLite file."""
    if config.url:
        from nexus.store.redis import RedisStore

        return RedisStore(config.url)
    from nexus.store.sqlite import SQLiteStore

    return SQLiteStore(Path(config.path).expanduser() if config.path else default_path())
