"""Wait: the request queue (F18), for when every backend that could serve is busy.

The router raises ``Busy`` only when capable backends exist (the model, capabilities, zone
and tier are right, tier-equivalent fallbacks included) and every one is at capacity or out
of its rate limit. The request then waits here, by priority (critical, high, normal, low) and
first come first served within one. Nothing polls: when a slot is freed (an attempt ends), a
backend changes (status, models) or a rate-limit token is due, :meth:`Queue.dispatch` offers
the room to the waiters in order, and the first that can use it gets it *reserved*: the
backend's pending count (and token) is taken on its behalf at once, so no newcomer can take it
in between. A waiter whose client leaves, or whose time is up, leaves the queue at once and
gives back a reservation it had not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nexus.config import QueuingConfig
from nexus.errors import NexusError, QueueRejected, QueueTimeout, ShuttingDown
from nexus.pipeline.exchange import Exchange
from nexus.registry import Backend, Registry
from nexus.routing.router import Busy, Route, Router

log = logging.getLogger("nexus.queue")

PRIORITIES = ("critical", "high", "normal", "low")
NORMAL = PRIORITIES.index("normal")
DEFAULT_SERVICE_SECONDS = 1.0  # a backend's service time before any was observed


@dataclass(eq=False)
class Waiter:
    ex: Exchange
    priority: int
    deadline: float
    backends: list[Backend]  # what it waits for (any of them may serve it)
    future: asyncio.Future[Route] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    enqueued: float = field(default_factory=time.monotonic)


class Queue:
    def __init__(
        self, config: QueuingConfig, registry: Registry, router: Router, attempts_per_model: int
    ) -> None:
        self.max_size = config.max_queue_size
        self.timeout = config.default_timeout_seconds
        self.registry = registry
        self.router = router
        self.attempts_per_model = attempts_per_model
        self.levels: tuple[deque[Waiter], ...] = tuple(deque() for _ in PRIORITIES)
        self.closed: Callable[[], NexusError] | None = None  # shutdown: the error to answer
        self._timer: asyncio.TimerHandle | None = None
        registry.on_change.append(lambda _backend: self.dispatch())
        registry.on_remove.append(lambda _backend: self.dispatch())

    def __len__(self) -> int:
        return sum(len(level) for level in self.levels)

    def depth(self) -> dict[str, int]:
        return {name: len(level) for name, level in zip(PRIORITIES, self.levels, strict=True)}

    # -- a request waits --------------------------------------------------------------------

    async def wait(self, ex: Exchange, busy: Busy) -> Route:
        """A route with its slot reserved, or the NexusError that ends the wait."""
        if self.closed is not None:
            raise self.closed()
        if ex.queue_deadline is None:
            timeout = min(self.timeout, ex.queue_timeout or self.timeout)
            ex.queue_deadline = time.monotonic() + timeout
            ex.record.queue_wait_seconds = 0.0
        waiter = Waiter(ex, ex.priority, ex.queue_deadline, busy.backends)
        self._admit(waiter)
        if busy.retry_after:
            self._wake_in(busy.retry_after)
        try:
            async with asyncio.timeout_at(self._loop_time(waiter.deadline)):
                return await waiter.future
        except TimeoutError:
            # (The room may have come at the very moment the time ran out: take it.)
            if waiter.future.done() and not waiter.future.cancelled():
                return waiter.future.result()
            raise self._timed_out(waiter) from None
        except asyncio.CancelledError:
            self._give_back(waiter)
            raise
        finally:
            self._leave(waiter)
            ex.record.queue_wait_seconds = (ex.record.queue_wait_seconds or 0.0) + (
                time.monotonic() - waiter.enqueued
            )

    def _admit(self, waiter: Waiter) -> None:
        if len(self) >= self.max_size:
            victim = self._victim(waiter.priority)
            if victim is None:
                raise QueueRejected(
                    f"the queue is full ({self.max_size} requests waiting): retry later",
                    headers={"Retry-After": str(self._eta(len(self), waiter.backends))},
                )
            self._leave(victim)
            victim.future.set_exception(
                QueueRejected(
                    "evicted from a full queue by a request of higher priority",
                    code="queue_evicted",
                    headers={"Retry-After": str(self._eta(len(self), victim.backends))},
                )
            )
        self.levels[waiter.priority].append(waiter)

    def _victim(self, priority: int) -> Waiter | None:
        """The oldest waiter of the lowest priority below ``priority``."""
        for level in reversed(self.levels[priority + 1 :]):
            for waiter in level:
                if not waiter.future.done():
                    return waiter
        return None

    def _leave(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):  # (not there: served, evicted or closed)
            self.levels[waiter.priority].remove(waiter)

    def _give_back(self, waiter: Waiter) -> None:
        """The client left after its slot was reserved: the slot goes to the next one."""
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            self.release(future.result().backend)
        elif not future.done():
            future.cancel()

    def _timed_out(self, waiter: Waiter) -> QueueTimeout:
        ahead = self._ahead(waiter)
        eta = self._eta(ahead, waiter.backends)
        waited = time.monotonic() - waiter.enqueued
        names = ", ".join(b.name for b in waiter.backends)
        return QueueTimeout(
            f"waited {waited:.1f} s for a busy backend ({names}) with {ahead} request(s) "
            f"ahead; retry in about {eta} s",
            headers={"Retry-After": str(eta)},
            context={"eta_seconds": eta, "queue_position": ahead + 1},
        )

    # -- room appears -------------------------------------------------------------------------

    def release(self, backend: Backend) -> None:
        """A reserved slot not used (its client left): free it for the next waiter."""
        self.registry.decrement_pending(backend)
        if backend.limiter is not None:
            backend.limiter.tokens += 1.0
        self.dispatch(backend)

    def dispatch(self, freed: Backend | None = None) -> None:
        """Offer the room there is to the waiters, most urgent first; each that can be
        served gets its backend reserved now. ``freed``: one slot of that backend came free,
        so only waiters that wait for it are asked, and the one given that slot ends the round
        (the rest found no room before it freed, and there is none now)."""
        if not any(self.levels):
            return
        for level in self.levels:
            for waiter in list(level):
                if waiter.future.done() or (freed is not None and freed not in waiter.backends):
                    continue
                ex = waiter.ex
                assert ex.plan is not None and ex.req is not None
                try:
                    route = self.router.select(ex.plan, ex.req, self.attempts_per_model)
                except Busy as busy:
                    waiter.backends = busy.backends
                    if busy.retry_after:
                        self._wake_in(busy.retry_after)
                    continue
                except NexusError as exc:  # e.g. its backends went down while it waited
                    level.remove(waiter)
                    waiter.future.set_exception(exc)
                    continue
                self._reserve(route)
                level.remove(waiter)
                waiter.future.set_result(route)
                if route.backend is freed:
                    return

    def _reserve(self, route: Route) -> None:
        backend = route.backend
        self.registry.increment_pending(backend)
        if backend.limiter is not None:
            backend.limiter.take(time.monotonic())
        route.reserved = True

    def _wake_in(self, seconds: float) -> None:
        """A rate-limit token is due: look again then (one timer, the earliest)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + seconds
        if self._timer is not None and not self._timer.cancelled():
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.dispatch()

    def close(self, error: Callable[[], NexusError]) -> None:
        """Shutdown: every waiter is answered now (they never started); no one new waits."""
        self.closed = error
        for level in self.levels:
            while level:
                waiter = level.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(error())
        if self._timer is not None:
            self._timer.cancel()

    # -- estimates ----------------------------------------------------------------------------

    def _ahead(self, waiter: Waiter) -> int:
        ahead = 0
        for level in self.levels[: waiter.priority + 1]:
            for other in level:
                if other is waiter:
                    return ahead
                ahead += 1
        return ahead

    @staticmethod
    def _eta(ahead: int, backends: list[Backend]) -> int:
        """Seconds until a request with ``ahead`` others before it would start: the turns of
        those ahead, shared among the slots of the backends it waits for."""
        slots = sum(b.capacity or 1 for b in backends) or 1
        times = [b.service_seconds for b in backends if b.service_seconds]
        service = sum(times) / len(times) if times else DEFAULT_SERVICE_SECONDS
        return max(1, math.ceil((ahead + 1) * service / slots))

    @staticmethod
    def _loop_time(deadline: float) -> float:
        """A time.monotonic() deadline on the event loop's clock."""
        loop = asyncio.get_running_loop()
        return loop.time() + (deadline - time.monotonic())


def shutting_down() -> ShuttingDown:
    return ShuttingDown("Nexus is shutting down: this request was still waiting in the queue")
