"""The monthly budget (F14): what cloud requests cost, kept to a limit.

Spend is the cost of every cloud request (``record.cost_usd``, from the usage the provider
reported). It is kept per billing cycle, which starts on ``billing_cycle_day`` at 00:00 UTC
(the month's last day when it is shorter), in the state store, so it survives restarts and
adds up across processes sharing the store.

Three states decide routing (``nexus.routing.router``): ``normal`` below the soft limit;
``soft-limit`` from ``soft_limit_percent`` on, where a cloud backend serves only when no local
one can; ``hard-limit`` at the limit, where no cloud backend serves and the configured action
answers what only the cloud could (``local-only``: 503; ``queue``: wait for local capacity;
``reject``: 429 until the cycle resets). A request whose own estimated cost would cross the
limit is treated as over it.

Charges are buffered in memory and written by a background task every
``storage.flush_interval_seconds``; the request path only reads ``spent``: the store's total
at the last flush plus what this process charged since.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nexus import pricing, tokens
from nexus.config import BudgetConfig
from nexus.records import RequestRecord
from nexus.registry import Backend
from nexus.routing.requirements import Requirements
from nexus.store import SpendRow, Store, StoreUnavailable, every

log = logging.getLogger("nexus.budget")

NORMAL, SOFT, HARD = "normal", "soft-limit", "hard-limit"
LEVELS = {NORMAL: 0, SOFT: 1, HARD: 2}
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def cycle_bounds(now: datetime, day: int) -> tuple[datetime, datetime]:
    """The billing cycle containing ``now``: [start, end), both at 00:00 UTC on ``day`` of
    their month, or on the month's last day when it has fewer days."""

    def anchor(year: int, month: int) -> datetime:
        last = calendar.monthrange(year, month)[1]
        return datetime(year, month, min(day, last), tzinfo=UTC)

    def shift(year: int, month: int, by: int) -> tuple[int, int]:
        index = year * 12 + (month - 1) + by
        return index // 12, index % 12 + 1

    start = anchor(now.year, now.month)
    if now < start:
        start = anchor(*shift(now.year, now.month, -1))
    return start, anchor(*shift(start.year, start.month, 1))


class Budget:
    def __init__(
        self,
        config: BudgetConfig,
        store: Store,
        flush_seconds: float,
        clock: Clock = utc_now,
    ) -> None:
        self.limit = config.monthly_limit
        self.soft = config.monthly_limit * config.soft_limit_percent / 100
        self.action = config.hard_limit_action
        self.day = config.billing_cycle_day
        self.store = store
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.cycle_start, self.cycle_end = cycle_bounds(clock(), self.day)
        self.stored = 0.0  # the cycle's total in the store, at the last flush
        self.unflushed = 0.0  # what this process charged since
        self.rows: dict[tuple[str, str], SpendRow] = {}  # the cycle's spend, for /v1/stats
        self._buffer: dict[tuple[str, str, str], SpendRow] = {}
        self._last_status = NORMAL
        self._task: asyncio.Task[None] | None = None
        self.wants_tokenizer: Callable[[], None] | None = None  # called once, when near

    @property
    def cycle(self) -> str:
        return self.cycle_start.date().isoformat()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._reload()
        self._last_status = self.status()
        if self._last_status != NORMAL:
            self._warn(self._last_status)
        self._task = asyncio.create_task(
            every(self.flush_seconds, self.flush, "writing spend to the state store"),
            name="nexus-budget-flush",
        )

    async def stop(self) -> None:
        """Cancel the flusher, then write what is left: a clean shutdown loses nothing."""
        task, self._task = self._task, None
        if task is None:
            return  # never started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await self.flush()
        except StoreUnavailable:  # (the outage was logged by the store)
            log.error(
                "budget: spend not written at shutdown (%d rows): the state store is away",
                len(self._buffer),
            )

    async def flush(self) -> None:
        buffer, self._buffer = self._buffer, {}
        try:
            await self.store.add_spend(list(buffer.values()))
        except BaseException:
            for key, row in buffer.items():  # kept for the next flush
                self._buffer.setdefault(key, SpendRow(*key)).add(row)
            raise
        flushed = sum(row.cost_usd for row in buffer.values() if row.cycle == self.cycle)
        self.unflushed -= flushed  # now in the store's total (even if re-reading it fails)
        self.stored += flushed
        await self._reload()

    async def _reload(self) -> None:
        """The cycle's totals as every process sharing the store added them up."""
        cycle = self.cycle
        rows = await self.store.spend(cycle)
        if cycle != self.cycle:
            return  # the cycle rolled over meanwhile
        self.stored = sum(row.cost_usd for row in rows)
        self.rows = {(row.backend, row.model): row for row in rows}
        for row in self._buffer.values():  # charged since the flush began
            if row.cycle == cycle:
                self.rows.setdefault((row.backend, row.model), SpendRow(*row_key(row))).add(row)

    # -- reading ------------------------------------------------------------------------------

    @property
    def spent(self) -> float:
        self._roll()
        return self.stored + self.unflushed

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.spent)

    def status(self) -> str:
        spent = self.spent
        if spent < self.soft:
            return NORMAL
        self._near()
        return HARD if spent >= self.limit else SOFT

    def _near(self) -> None:
        """Past the soft limit, exact counts start to matter: the tokenizer is loaded now
        (in the background), not before, since its encodings cost ~40-80 MB of memory."""
        wake, self.wants_tokenizer = self.wants_tokenizer, None
        if wake is not None:
            wake()

    def allows(self, estimate: float) -> bool:
        """Whether a cloud request estimated to cost ``estimate`` may be sent."""
        return self.spent + estimate < self.limit

    def refuses(self, backend: Backend, model: str, req: Requirements) -> str | None:
        """Why a cloud ``backend`` may not serve ``req`` now, or None: the limit is reached,
        or this request's estimated cost (its counted prompt and its max_tokens) would cross
        it. Without max_tokens, its prompt alone, except where Nexus sets one itself
        (Anthropic requires it: the backend's max_output_tokens)."""
        if self.status() == HARD:
            return f"budget: the monthly limit (${self.limit:.2f}) is reached"
        price = pricing.price_for(backend, model)
        if price is None:
            return None  # costed 0 (cost_unknown): nothing to keep it from
        completion = req.max_tokens
        if not completion and backend.type == "anthropic":
            completion = backend.max_output_tokens
        prompt = req.prompt_tokens
        if prompt is None and (count := req.prompt_count) is not None:
            # Counting a long prompt takes a millisecond; its bytes, microseconds. Far from
            # the limit the bound fits and the exact count is never needed.
            bound = count.bound(backend.type, model)
            cost = pricing.cost(price, prompt_tokens=bound, completion_tokens=completion)
            if self.allows(cost):
                return None
            prompt = count.tokens_now(backend.type, model)
            if prompt is None:  # the encoding is not loaded yet: the bound never undercounts
                self._near()
                prompt = bound
        if prompt is None:
            prompt = tokens.estimate(req.prompt_chars)
        estimate = pricing.cost(price, prompt_tokens=prompt, completion_tokens=completion)
        if self.allows(estimate):
            return None
        return (
            f"budget: this request (~${estimate:.4f}) would cross the monthly limit "
            f"(${self.remaining:.4f} left)"
        )

    def seconds_to_reset(self) -> float:
        return max(0.0, (self.cycle_end - self.clock()).total_seconds())

    def _roll(self) -> None:
        """A new cycle starts from zero (what the old one buffered is still written)."""
        if self.clock() < self.cycle_end:
            return
        self.cycle_start, self.cycle_end = cycle_bounds(self.clock(), self.day)
        self.stored = self.unflushed = 0.0
        self.rows = {}
        log.info("budget: a new billing cycle starts (%s)", self.cycle)

    # -- writing ------------------------------------------------------------------------------

    def charge(self, record: RequestRecord) -> None:
        """Recorder sink: add a cloud request's cost to the cycle."""
        cost = record.cost_usd
        if not cost:
            return
        self._roll()
        row = SpendRow(
            self.cycle,
            record.backend,
            record.routed_model or record.model,
            1,
            record.tokens_prompt or 0,
            record.tokens_completion or 0,
            cost,
        )
        key = row_key(row)
        self._buffer.setdefault(key, SpendRow(*key)).add(row)
        self.rows.setdefault(key[1:], SpendRow(*key)).add(row)
        self.unflushed += cost
        status = self.status()
        if LEVELS[status] > LEVELS[self._last_status]:
            self._warn(status)
        self._last_status = status

    def _warn(self, status: str) -> None:
        if status == SOFT:
            log.warning(
                "budget: soft limit crossed ($%.2f of $%.2f spent this cycle): cloud backends "
                "now serve only what no local backend can",
                self.spent,
                self.limit,
            )
        else:
            log.warning(
                "budget: monthly limit reached ($%.2f of $%.2f): cloud backends are not used "
                "until %s (hard_limit_action %s)",
                self.spent,
                self.limit,
                self.cycle_end.date().isoformat(),
                self.action,
            )

    # -- showing ------------------------------------------------------------------------------

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-nexus-budget-status", self.status().encode()),
            (b"x-nexus-budget-remaining", f"{self.remaining:.4f}".encode()),
        ]

    def stats(self) -> dict[str, Any]:
        status = self.status()
        return {
            "limit_usd": self.limit,
            "spent_usd": round(self.spent, 6),
            "remaining_usd": round(self.remaining, 6),
            "status": status,
            "soft_limit_usd": round(self.soft, 6),
            "hard_limit_action": self.action,
            "cycle_start": self.cycle_start.isoformat(),
            "cycle_end": self.cycle_end.isoformat(),
            "by_backend_model": [
                {
                    "backend": row.backend,
                    "model": row.model,
                    "requests": row.requests,
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "cost_usd": round(row.cost_usd, 6),
                }
                for row in sorted(self.rows.values(), key=lambda r: -r.cost_usd)
            ],
        }


def row_key(row: SpendRow) -> tuple[str, str, str]:
    return row.cycle, row.backend, row.model
