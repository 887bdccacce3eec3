"""Tenants at work (F21, F22): who is calling, may they, and what they used.

With ``[auth] enabled``, every API request names a key (``Authorization: Bearer`` or
``x-api-key``). :meth:`Tenants.authenticate` finds its tenant from memory (a revoked or
expired key, or none, is a 401); :meth:`Tenants.admit`, once the model is known, checks the
tenant's models (403), monthly quota and rate limit (429 with ``Retry-After`` and OpenAI's
``x-ratelimit-*`` headers). Both run on the request path and touch no disk.

Tenants and keys live in the state store; every process polls its version once a second and
reloads on a change, so a key revoked anywhere is refused everywhere within about a second.
Usage (requests, tokens, cost per tenant, model and day) is buffered and written with the
store's flush, like the budget's spend; quotas read the cycle's totals from the store plus what
this process added since. The totals are read again after a flush that wrote, or when the
store's usage version says another process wrote, or when a new cycle began: an idle gateway
asks the store one number per flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nexus.api.credentials import bearer_token
from nexus.asgi import Scope
from nexus.budget import cycle_bounds, utc_now
from nexus.config import AuthConfig
from nexus.errors import (
    InvalidRequest,
    ModelNotAllowed,
    NotFound,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
)
from nexus.records import RequestRecord
from nexus.routing.limits import TokenBucket
from nexus.store import Store, StoreUnavailable, every
from nexus.tenants.limits import Decision, Limiter, LocalLimiter
from nexus.tenants.model import (
    MAX_KEY_CHARS,
    ApiKey,
    Tenant,
    UsageRow,
    key_hash,
    key_id_of,
    name_problem,
    new_key,
)

log = logging.getLogger("nexus.tenants")

REFRESH_SECONDS = 1.0
MAX_TRACKED_ADDRESSES = 10_000  # clients whose failed attempts are counted (LRU)
MAX_PATTERNS = 256  # model patterns of one tenant
LIMIT_FIELDS = ("rpm", "burst", "tpm", "monthly_tokens", "monthly_cost")


class Tenants:
    def __init__(
        self,
        config: AuthConfig,
        store: Store,
        *,
        flush_seconds: float,
        cycle_day: int,
        limiter: Limiter | None = None,
        environ: dict[str, str] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.config = config
        self.store = store
        self.limiter: Limiter = limiter or LocalLimiter()
        self.flush_seconds = flush_seconds
        self.cycle_day = cycle_day
        self.clock = clock
        self.environ = environ
        self.by_name: dict[str, Tenant] = {}
        self.by_id: dict[str, ApiKey] = {}
        self.static_keys: dict[str, ApiKey] = {}  # from the environment, by hash: any format
        self.version = -1
        self.used: dict[str, list[float]] = {}  # tenant -> [tokens, cost] this cycle
        self._used_cycle: datetime | None = None  # the cycle ``used`` is of (its start)
        # The store's usage version and the cycle (its start) at the last read of the totals.
        self._usage_read: tuple[int, datetime] | None = None
        self._cycle = cycle_bounds(clock(), cycle_day)  # (start, end), recomputed when passed
        self._buffer: dict[tuple[str, str, str], UsageRow] = {}
        self._failures: OrderedDict[str, TokenBucket] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._declare_static()
        await self.reload()
        await self._reload_usage(await self.store.usage_version())
        self._tasks = [
            asyncio.create_task(
                every(REFRESH_SECONDS, self._poll, "reading tenants from the state store"),
                name="nexus-tenants-poll",
            ),
            asyncio.create_task(
                every(self.flush_seconds, self.flush, "writing usage to the state store"),
                name="nexus-usage-flush",
            ),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return  # never started
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()  # a clean stop loses no usage
        except StoreUnavailable:  # (the outage was logged by the store)
            log.error(
                "usage not written at shutdown (%d rows): the state store is away",
                len(self._buffer),
            )

    async def _declare_static(self) -> None:
        """Tenants of the config file: written to the store (their usage is kept like any
        other's), their keys read from the environment and kept in memory only."""
        import os

        environ = self.environ if self.environ is not None else os.environ
        declared_names = {declared.name for declared in self.config.tenants}
        stored, _ = await self.store.tenants()
        before = {tenant.name: tenant for tenant in stored}
        for gone in stored:
            if gone.static and gone.name not in declared_names:
                # Taken out of the config file: nobody could delete it otherwise (the API
                # refuses to change a static tenant), and keys made for it would still work.
                log.info("tenant %s is no longer in the config file: deleted", gone.name)
                await self.store.delete_tenant(gone.name)
        for declared in self.config.tenants:
            known = before.get(declared.name)
            tenant = Tenant(
                declared.name,
                list(declared.models),
                declared.rpm,
                declared.burst,
                declared.tpm,
                declared.monthly_tokens,
                declared.monthly_cost,
                created=time.time() if known is None else known.created,
                static=True,
            )
            if tenant != known:  # (unchanged: no write, no version bump, no replica reloads)
                await self.store.put_tenant(tenant)
            key = environ.get(declared.key_env, "")
            if not 16 <= len(key) <= MAX_KEY_CHARS:
                log.warning(
                    "tenant %s: $%s is unset, too short or too long (16 to %d characters): it "
                    "has no key",
                    declared.name,
                    declared.key_env,
                    MAX_KEY_CHARS,
                )
                continue
            digest = key_hash(key)
            self.static_keys[digest] = ApiKey("env", declared.name, digest, 0.0)

    async def _poll(self) -> None:
        if await self.store.version() != self.version:
            await self.reload()

    async def reload(self) -> None:
        version = await self.store.version()
        tenants, keys = await self.store.tenants()
        self.by_name = {t.name: t for t in tenants}
        self.by_id = {k.id: k for k in keys}
        self.version = version

    # -- who is calling -----------------------------------------------------------------------

    def authenticate(self, scope: Scope) -> Tenant:
        """The tenant whose key the request carries; a 401 (or 429 for a client that keeps
        trying wrong keys) otherwise."""
        address = scope.get("client") or ("", 0)
        failures = self._failures.get(address[0])
        now = time.monotonic()
        if failures is not None and not failures.ready(now):
            raise RateLimited(
                "too many requests with a wrong API key from this address",
                failures.wait_seconds(now),
            )
        key = presented_key(scope)
        if key is None:
            raise self._failed(address[0], now, "missing API key (Authorization: Bearer <key>)")
        tenant = self._tenant_of(key)
        if tenant is None:
            raise self._failed(address[0], now, "invalid API key")
        return tenant

    def _tenant_of(self, key: str) -> Tenant | None:
        if len(key) > MAX_KEY_CHARS:
            return None
        digest = key_hash(key)  # once: compared in constant time, or looked up by itself
        key_id = key_id_of(key)
        record = self.by_id.get(key_id) if key_id else None
        if record is None or not hmac.compare_digest(digest, record.hash):
            record = self.static_keys.get(digest)
        if record is None or record.revoked:
            return None
        if record.expires is not None and record.expires <= time.time():
            return None
        return self.by_name.get(record.tenant)

    def _failed(self, address: str, now: float, why: str) -> Unauthorized:
        bucket = self._failures.get(address)
        if bucket is None:
            per_minute = self.config.failed_attempts_per_minute
            bucket = self._failures[address] = TokenBucket(per_minute, per_minute)
            if len(self._failures) > MAX_TRACKED_ADDRESSES:
                self._failures.popitem(last=False)
        self._failures.move_to_end(address)
        bucket.take(now)
        return Unauthorized(why)

    # -- may they -------------------------------------------------------------------------------

    async def admit(self, tenant: Tenant, requested: str, resolved: str) -> Decision:
        """Its models, its quota, its rate limit (in this order: a refused model costs it no
        request)."""
        if not (tenant.allows(requested) or tenant.allows(resolved)):
            raise ModelNotAllowed(
                f"this API key may not use model '{requested[:200]}'", param="model"
            )
        self._check_quota(tenant)
        decision = await self.limiter.acquire(tenant)
        if not decision.allowed:
            error = RateLimited(
                f"rate limit of tenant '{tenant.name}' reached ({decision.exhausted} per "
                f"minute); retry in {decision.retry_after:.1f} s",
                decision.retry_after,
            )
            error.headers.update({k.decode(): v.decode() for k, v in decision.headers()})
            raise error
        return decision

    def _check_quota(self, tenant: Tenant) -> None:
        if not (tenant.monthly_tokens or tenant.monthly_cost):
            return
        now = self.clock()
        tokens, cost = self._this_cycle(now).get(tenant.name, (0.0, 0.0))
        end = self._bounds(now)[1]
        reset = (end - now).total_seconds()
        if tenant.monthly_tokens and tokens >= tenant.monthly_tokens:
            raise QuotaExceeded(
                f"tenant '{tenant.name}' used its {tenant.monthly_tokens} tokens of this cycle "
                f"(it resets on {end.date().isoformat()})",
                reset,
            )
        if tenant.monthly_cost and cost >= tenant.monthly_cost:
            raise QuotaExceeded(
                f"tenant '{tenant.name}' used its ${tenant.monthly_cost:.2f} of this cycle "
                f"(it resets on {end.date().isoformat()})",
                reset,
            )

    # -- what they used -------------------------------------------------------------------------

    def record(self, record: RequestRecord) -> None:
        """Recorder sink: a finished request of a tenant. One that reached no backend (refused,
        or for a model nobody serves) used nothing, and its model may be any name a client
        made up: it leaves no usage row."""
        name = record.tenant
        tenant = self.by_name.get(name) if name else None
        if tenant is None or not record.backend:
            return
        prompt, completion = record.tokens_prompt or 0, record.tokens_completion or 0
        cost = record.cost_usd or 0.0
        # Dated by the service's clock, as the cycle is: a row and the quota it counts
        # against never disagree on what day it is.
        now = self.clock()
        day = now.astimezone(UTC).date().isoformat()
        model = record.routed_model or record.model
        row = self._buffer.get((name, day, model))
        if row is None:
            row = self._buffer[name, day, model] = UsageRow(name, day, model)
        row.requests += 1
        row.prompt_tokens += prompt
        row.completion_tokens += completion
        row.cost_usd += cost
        used = self._this_cycle(now).setdefault(name, [0.0, 0.0])
        used[0] += prompt + completion
        used[1] += cost
        if prompt or completion:
            self.limiter.spend_tokens(tenant, prompt + completion)

    async def flush(self) -> None:
        buffer, self._buffer = self._buffer, {}
        try:
            await self.store.add_usage(list(buffer.values()))
        except BaseException:
            for key, row in buffer.items():
                self._buffer.setdefault(key, UsageRow(*key)).add(row)
            raise
        # The totals may differ from those last read when this process wrote, another one
        # did (the version moved) or a new cycle began (its totals are not the last one's).
        version = await self.store.usage_version()
        if buffer or self._usage_read != (version, self._bounds(self.clock())[0]):
            await self._reload_usage(version)

    async def _reload_usage(self, version: int) -> None:
        """This cycle's totals per tenant, as every process wrote them, plus what this one
        has buffered since; ``version``, the store's usage version read before them (a write
        after it is seen at the next flush)."""
        start, _ = self._bounds(self.clock())
        since = start.date().isoformat()
        used: dict[str, list[float]] = {}
        for row in [*await self.store.usage(None, since), *self._buffer.values()]:
            if row.day >= since:
                totals = used.setdefault(row.tenant, [0.0, 0.0])
                totals[0] += row.prompt_tokens + row.completion_tokens
                totals[1] += row.cost_usd
        self.used = used
        self._used_cycle = start
        self._usage_read = version, start

    def _this_cycle(self, now: datetime) -> dict[str, list[float]]:
        """``used``, or nothing if a new cycle began since it was read (the store's totals
        of the new cycle are read at the next flush): a quota is lifted at the reset, not up
        to a flush later."""
        start = self._bounds(now)[0]
        if start != self._used_cycle:
            self.used = {}
            self._used_cycle = start
        return self.used

    def _bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """The billing cycle ``now`` is in (worked out again only once it has passed: it is
        on every quota check)."""
        start, end = self._cycle
        if not start <= now < end:
            self._cycle = cycle_bounds(now, self.cycle_day)
        return self._cycle

    # -- the admin's operations -----------------------------------------------------------------

    async def create(self, fields: dict[str, Any]) -> Tenant:
        name = fields.get("name")
        if (problem := name_problem(name)) is not None:
            raise InvalidRequest(f"'name' {problem}", param="name")
        assert isinstance(name, str)
        exists = InvalidRequest(f"tenant '{name}' exists already", code="exists")
        if name in self.by_name:
            raise exists
        tenant = Tenant(name, created=time.time())
        apply_fields(tenant, fields)
        created = await self.store.create_tenant(tenant)  # (another process may have, meanwhile)
        await self.reload()
        if not created:
            raise exists
        return tenant

    async def update(self, name: str, fields: dict[str, Any]) -> Tenant:
        tenant = self._managed(name)
        changed = Tenant(**tenant.to_dict())
        apply_fields(changed, fields)
        await self.store.put_tenant(changed)
        await self.reload()
        return changed

    async def delete(self, name: str) -> Tenant:
        tenant = self._managed(name)
        await self.store.delete_tenant(name)
        await self.reload()
        return tenant

    def get(self, name: str) -> Tenant:
        tenant = self.by_name.get(name)
        if tenant is None:
            raise NotFound(f"no tenant '{name[:64]}'")
        return tenant

    def _managed(self, name: str) -> Tenant:
        tenant = self.get(name)
        if tenant.static:
            raise InvalidRequest(
                f"tenant '{name}' is declared in the config file: change it there",
                code="static_tenant",
            )
        return tenant

    async def create_key(self, tenant_name: str, expires: float | None) -> tuple[str, ApiKey]:
        """A new key for the tenant: the key itself is returned once, never stored."""
        if tenant_name not in self.by_name:
            raise NotFound(f"no tenant '{tenant_name[:64]}'")
        if expires is not None and expires <= time.time():
            raise InvalidRequest("'expires' is in the past", param="expires")
        key, key_id = new_key()
        record = ApiKey(key_id, tenant_name, key_hash(key), time.time(), expires)
        await self.store.put_key(record)
        await self.reload()
        return key, record

    async def revoke(self, key_id: str) -> ApiKey:
        record = self.by_id.get(key_id)
        if record is None:
            raise NotFound(f"no key '{key_id[:64]}'")
        await self.store.revoke_key(key_id)
        await self.reload()
        # (Gone meanwhile with its tenant, deleted elsewhere: it is revoked all the same.)
        return self.by_id.get(key_id) or dataclasses.replace(record, revoked=True)

    async def usage(self, tenant: str | None, since: str) -> list[UsageRow]:
        await self.flush()  # what was just used is part of the answer
        return await self.store.usage(tenant, since)

    def summary(self) -> dict[str, Any]:
        """For /v1/stats: each tenant's use of this cycle against its quotas."""
        used = self._this_cycle(self.clock())
        return {
            name: {
                "tokens": int(used.get(name, (0, 0))[0]),
                "cost_usd": round(used.get(name, (0, 0.0))[1], 6),
                "monthly_tokens": tenant.monthly_tokens,
                "monthly_cost": tenant.monthly_cost,
            }
            for name, tenant in sorted(self.by_name.items())
        }


def presented_key(scope: Scope) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>`` or ``x-api-key``."""
    for name, raw in scope["headers"]:
        if name == b"authorization":
            if (key := bearer_token(bytes(raw).decode("latin-1"))) is not None:
                return key
        elif name == b"x-api-key" and raw.strip():
            return bytes(raw).decode("latin-1").strip()
    return None


def apply_fields(tenant: Tenant, fields: dict[str, Any]) -> None:
    """The limits and models an admin set, checked (400 naming the field otherwise)."""
    for field_name, value in fields.items():
        if field_name == "name":
            continue
        if field_name == "models":
            # (Each request of the tenant is matched against every pattern: a bounded list.)
            if (
                not isinstance(value, list)
                or len(value) > MAX_PATTERNS
                or not all(isinstance(p, str) and 0 < len(p) <= 256 for p in value)
            ):
                raise InvalidRequest(
                    f"'models' must be a list of at most {MAX_PATTERNS} patterns", param="models"
                )
            tenant.models = list(value)
        elif field_name in LIMIT_FIELDS:
            kind = float if field_name == "monthly_cost" else int
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidRequest(f"'{field_name}' must be a number >= 0", param=field_name)
            if kind is int and not isinstance(value, int):
                raise InvalidRequest(f"'{field_name}' must be a whole number", param=field_name)
            setattr(tenant, field_name, kind(value))
        else:
            known = ", ".join(("models", *LIMIT_FIELDS))
            raise InvalidRequest(
                f"unknown field '{str(field_name)[:40]}' (known: {known})",
                param=str(field_name)[:40],
            )
