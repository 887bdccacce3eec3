"""The shared state store: Redis, for several Nexus replicas behind one load balancer.

``[storage] url = "redis://host:6379/0"`` puts what the SQLite file holds (spend, tenants,
keys, usage, the fleet's demand) in Redis, so every replica reads and adds to the same
totals. Sums are kept with Redis' own increments (``HINCRBY``/``HINCRBYFLOAT``, several in one
``MULTI``), so two replicas adding at once both count. The per-tenant rate limits live here
too (``RedisLimiter`` in ``redis_limits.py``): one script, one round trip per request.

Layout, every key under ``nexus:``::

    spend:<cycle>    hash  ["backend","model","requests|prompt|completion|cost"] -> number
    usage:<day>      hash  ["tenant","model","requests|prompt|completion|cost"] -> number,
                           expires USAGE_KEEP_DAYS after its day began
    usage:days       set   the days that have a usage hash (days gone by then are dropped
                           when usage is read)
    usage:version    int   bumped by every addition to usage
    tenants          hash  name -> tenant JSON
    keys             hash  key id -> key JSON (the key's SHA-256, never the key)
    version          int   bumped by every change to tenants or keys
    demand           str   the fleet's demand history (JSON)
    rl:<tenant>:*    hash  rate-limit buckets (tokens, last refill)

What reads usage: each replica's quotas, the current billing cycle (from its first day, at
most 31 days back); ``/admin/usage`` and ``nexus tenants usage``, the last 31 days unless
``since`` says otherwise. Kept: the current and the previous billing cycle, whatever the
cycle's day (two cycles span at most 62 days), and a week more; older days are gone from
Redis (the SQLite file keeps every day).

When Redis is away every call raises :class:`StoreUnavailable` quickly (no retries here: the
callers keep what they have in memory and try again on their next flush). Each failure is
counted in ``nexus_store_errors_total``; the start of an outage and its end are logged once
each (``nexus.store.Outage``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import orjson

from nexus.errors import NotFound, StartupError
from nexus.store import Outage, SpendRow
from nexus.store.resp import Client, Command, ConnectionLost, Reply, ReplyError
from nexus.tenants.model import ApiKey, Tenant, UsageRow

PREFIX = "nexus:"
TIMEOUT_SECONDS = 0.5  # one round trip on a LAN is ~0.2 ms: 0.5 s means Redis is in trouble
FIELDS = ("requests", "prompt", "completion", "cost")
USAGE_KEEP_DAYS = 70  # the current and the previous billing cycle (<= 62 days), and a week
T = TypeVar("T")

# KEYS: tenants, version. ARGV: name, tenant JSON. 0 if a tenant of that name exists.
CREATE_TENANT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1
"""

# KEYS: tenants, keys, version. ARGV: the tenant. Its keys go with it.
DELETE_TENANT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  if cjson.decode(fields[i + 1])['tenant'] == ARGV[1] then
    redis.call('HDEL', KEYS[2], fields[i])
  end
end
redis.call('INCR', KEYS[3])
return 1
"""
# KEYS: tenants, keys, version. ARGV: tenant, key id, key record. Only for a tenant that is.
PUT_KEY = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('INCR', KEYS[3])
return 1
"""
# KEYS: keys, version. ARGV: key id. 1 if it was live and is revoked now.
REVOKE_KEY = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local record = cjson.decode(raw)
if record['revoked'] then return 0 end
record['revoked'] = true
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
redis.call('INCR', KEYS[2])
return 1
"""


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = Client(url, TIMEOUT_SECONDS)  # fails fast; the callers retry
        # Changes that read before they write run as scripts: atomic, whatever another
        # replica does meanwhile (SQLite gets the same from its transactions and foreign key).
        self._create_tenant = self.client.script(CREATE_TENANT)
        self._delete_tenant = self.client.script(DELETE_TENANT)
        self._put_key = self.client.script(PUT_KEY)
        self._revoke_key = self.client.script(REVOKE_KEY)
        self.outage = Outage(f"Redis at {safe_url(url)}", "is unreachable", "is reachable again")

    @property
    def down(self) -> bool:
        """Inside an outage (logged once when it starts and once when it ends)."""
        return self.outage.down

    async def call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await fn()
        except (ConnectionLost, ReplyError) as exc:
            raise self.outage.failed(operation, f"Redis: {type(exc).__name__}") from exc
        self.outage.worked(operation)
        return result

    async def open(self) -> None:
        try:
            await self.client.command("PING")
        except (ConnectionLost, ReplyError) as exc:
            raise StartupError(
                f"cannot reach the state store at {safe_url(self.url)} ({exc}); start Redis, "
                "or remove [storage] url to use the embedded SQLite file"
            ) from None

    async def close(self) -> None:
        await self.client.close()

    # -- spend --------------------------------------------------------------------------------

    async def add_spend(self, rows: list[SpendRow]) -> None:
        if rows:
            await self.call("add_spend", lambda: self.client.transaction(_increments(rows)))

    async def spend(self, cycle: str) -> list[SpendRow]:
        raw = await self.call(
            "spend", lambda: self.client.command("HGETALL", f"{PREFIX}spend:{cycle}")
        )
        return [
            SpendRow(cycle, backend, model, *sums)
            for (backend, model), sums in _unpack(_pairs(raw)).items()
        ]

    # -- tenants and keys ---------------------------------------------------------------------

    async def version(self) -> int:
        raw = await self.call("version", lambda: self.client.command("GET", f"{PREFIX}version"))
        return int(raw or 0)

    async def tenants(self) -> tuple[list[Tenant], list[ApiKey]]:
        raw_tenants, raw_keys = await self.call(
            "tenants",
            lambda: self.client.transaction(
                [("HGETALL", f"{PREFIX}tenants"), ("HGETALL", f"{PREFIX}keys")]
            ),
        )
        tenants = sorted(
            (Tenant(**orjson.loads(v)) for v in _pairs(raw_tenants).values()),
            key=lambda t: t.name,
        )
        keys = sorted((ApiKey(**orjson.loads(v)) for v in _pairs(raw_keys).values()), key=_created)
        return tenants, keys

    async def create_tenant(self, tenant: Tenant) -> bool:
        keys = [f"{PREFIX}tenants", f"{PREFIX}version"]
        definition = orjson.dumps(tenant.to_dict())
        created = await self.call(
            "create_tenant",
            lambda: self.client.run(self._create_tenant, keys, [tenant.name, definition]),
        )
        return bool(created)

    async def put_tenant(self, tenant: Tenant) -> None:
        definition = orjson.dumps(tenant.to_dict())
        await self.call("put_tenant", lambda: self._change("tenants", tenant.name, definition))

    async def delete_tenant(self, name: str) -> bool:
        keys = [f"{PREFIX}tenants", f"{PREFIX}keys", f"{PREFIX}version"]
        deleted = await self.call(
            "delete_tenant", lambda: self.client.run(self._delete_tenant, keys, [name])
        )
        return bool(deleted)

    async def put_key(self, key: ApiKey) -> None:
        record = orjson.dumps({**key.to_dict(), "hash": key.hash})
        keys = [f"{PREFIX}tenants", f"{PREFIX}keys", f"{PREFIX}version"]
        added = await self.call(
            "put_key", lambda: self.client.run(self._put_key, keys, [key.tenant, key.id, record])
        )
        if not added:
            raise NotFound(f"no tenant '{key.tenant[:64]}'")  # deleted by another replica

    async def revoke_key(self, key_id: str) -> bool:
        keys = [f"{PREFIX}keys", f"{PREFIX}version"]
        revoked = await self.call(
            "revoke_key", lambda: self.client.run(self._revoke_key, keys, [key_id])
        )
        return bool(revoked)

    async def _change(self, table: str, field: str, value: bytes) -> None:
        """One change to tenants or keys, and the version bump every replica polls."""
        await self.client.transaction(
            [("HSET", f"{PREFIX}{table}", field, value), ("INCR", f"{PREFIX}version")]
        )

    # -- usage --------------------------------------------------------------------------------

    async def add_usage(self, rows: list[UsageRow]) -> None:
        if rows:
            days = sorted({row.day for row in rows})
            commands = [
                *_increments(rows),
                *(("EXPIREAT", f"{PREFIX}usage:{day}", _usage_expiry(day)) for day in days),
                ("SADD", f"{PREFIX}usage:days", *days),
                ("INCR", f"{PREFIX}usage:version"),
            ]
            await self.call("add_usage", lambda: self.client.transaction(commands))

    async def usage_version(self) -> int:
        raw = await self.call(
            "usage_version", lambda: self.client.command("GET", f"{PREFIX}usage:version")
        )
        return int(raw or 0)

    async def usage(self, tenant: str | None, since: str) -> list[UsageRow]:
        async def read() -> list[UsageRow]:
            members = await self.client.command("SMEMBERS", f"{PREFIX}usage:days")
            known = [d.decode() for d in members]
            now = time.time()
            gone = [day for day in known if _usage_expiry(day) <= now]
            if gone:  # their hashes expired: the set stays as small as what is kept
                await self.client.command("SREM", f"{PREFIX}usage:days", *gone)
            days = sorted(day for day in known if day >= since and day not in gone)
            hashes = await self.client.pipeline([("HGETALL", f"{PREFIX}usage:{d}") for d in days])
            rows = [
                UsageRow(names[0], day, names[1], *sums)
                for day, raw in zip(days, hashes, strict=True)
                for names, sums in _unpack(_pairs(raw)).items()
                if tenant is None or names[0] == tenant
            ]
            return sorted(rows, key=lambda r: (r.tenant, r.day, r.model))

        return await self.call("usage", read)

    # -- fleet demand -------------------------------------------------------------------------

    async def load_demand(self) -> dict[str, Any] | None:
        raw = await self.call("load_demand", lambda: self.client.command("GET", f"{PREFIX}demand"))
        return None if raw is None else dict(orjson.loads(raw))

    async def save_demand(self, snapshot: dict[str, Any]) -> None:
        text = orjson.dumps(snapshot)
        await self.call("save_demand", lambda: self.client.command("SET", f"{PREFIX}demand", text))


def _created(key: ApiKey) -> float:
    return key.created


def _usage_expiry(day: str) -> int:
    """When a day's usage hash expires (Unix time): USAGE_KEEP_DAYS after the day began."""
    began = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC)
    return int((began + timedelta(days=USAGE_KEEP_DAYS)).timestamp())


def _increments(
    rows: list[SpendRow] | list[UsageRow],
) -> list[Command]:
    """Rows as increments (``HINCRBY``, ``HINCRBYFLOAT`` for costs), zero amounts left out."""
    commands: list[Command] = []
    for row in rows:
        if isinstance(row, SpendRow):
            key, first = f"{PREFIX}spend:{row.cycle}", row.backend
        else:
            key, first = f"{PREFIX}usage:{row.day}", row.tenant
        values = (row.requests, row.prompt_tokens, row.completion_tokens, float(row.cost_usd))
        for what, value in zip(FIELDS, values, strict=True):
            if value:
                field = orjson.dumps([first, row.model, what])
                command = "HINCRBYFLOAT" if isinstance(value, float) else "HINCRBY"
                commands.append((command, key, field, value))
    return commands


def _pairs(raw: Reply) -> dict[bytes, bytes]:
    """``HGETALL``'s flat [field, value, field, value...] as a dict."""
    items: list[bytes] = raw or []
    return dict(zip(items[::2], items[1::2], strict=True))


def _unpack(raw: dict[bytes, bytes]) -> dict[tuple[str, str], tuple[int, int, int, float]]:
    """A sums hash back into (first, second) -> (requests, prompt, completion, cost)."""
    rows: dict[tuple[str, str], list[float]] = {}
    for field, value in raw.items():
        first, second, what = orjson.loads(field)
        rows.setdefault((first, second), [0, 0, 0, 0.0])[FIELDS.index(what)] = float(value)
    return {
        names: (int(sums[0]), int(sums[1]), int(sums[2]), sums[3])
        for names, sums in sorted(rows.items())
    }
