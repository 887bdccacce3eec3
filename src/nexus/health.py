"""Health checker (F03): one small loop per backend, probing concurrently and staggered.

The request path never waits on a probe: probes only write to the registry. Each loop
sleeps ``interval_seconds`` give or take 10 % (so many backends do not get probed in the
same instant), and can be woken early by :meth:`HealthChecker.check_soon` when live
traffic sees the backend fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable

from nexus import pricing
from nexus.backends import Adapter, ProbeClient, ProbeError, auth
from nexus.config import HealthCheckConfig
from nexus.registry import Backend, BackendStatus, Model, Registry
from nexus.routing.requirements import CONTROL_CHARS, MAX_MODEL_NAME

log = logging.getLogger("nexus.health")
# Its own generator: drawing from the random module's shared one would disturb anyone who
# seeded it (a test framework replaying its examples does).
JITTER = random.Random()

MAX_MODELS = 10_000  # per backend: more than any real server lists

ProbeObserver = Callable[[Backend, float, bool], None]


def next_status(
    current: BackendStatus, ok: bool, successes: int, failures: int, cfg: HealthCheckConfig
) -> BackendStatus:
    """F03's state machine; ``successes``/``failures`` already include this probe."""
    if current is BackendStatus.DRAINING:
        return current
    if current is BackendStatus.UNKNOWN:
        return BackendStatus.HEALTHY if ok else BackendStatus.UNHEALTHY
    if current is BackendStatus.HEALTHY and not ok and failures >= cfg.failure_threshold:
        return BackendStatus.UNHEALTHY
    if current is BackendStatus.UNHEALTHY and ok and successes >= cfg.recovery_threshold:
        return BackendStatus.HEALTHY
    return current


class HealthChecker:
    def __init__(
        self,
        registry: Registry,
        config: HealthCheckConfig,
        adapters: dict[str, Adapter],
        client: ProbeClient,
        observers: list[ProbeObserver] | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.adapters = adapters
        self.client = client
        self.observers = observers or []
        self._started = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        self._started = True
        for backend in self.registry:
            self.watch(backend)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._started = False

    def watch(self, backend: Backend, *, probe_now: bool = True) -> None:
        """Start probing ``backend`` (the first probe right away unless ``probe_now`` is off)."""
        if not self._started or backend.id in self._tasks:
            return
        self._wake[backend.id] = asyncio.Event()
        self._tasks[backend.id] = asyncio.create_task(
            self._loop(backend, probe_now), name=f"health:{backend.name}"
        )

    def unwatch(self, backend_id: str) -> None:
        task = self._tasks.pop(backend_id, None)
        self._wake.pop(backend_id, None)
        if task is not None:
            task.cancel()

    def check_soon(self, backend: Backend) -> None:
        event = self._wake.get(backend.id)
        if event is not None:
            event.set()

    async def _loop(self, backend: Backend, probe_now: bool) -> None:
        wake = self._wake[backend.id]
        while True:
            if probe_now:
                await self.check(backend)
            probe_now = True
            if not self.config.enabled:
                return  # one probe to learn the models, then trust them
            every = (
                self.config.cloud_interval_seconds
                if backend.cloud
                else self.config.interval_seconds
            )
            delay = every * JITTER.uniform(0.9, 1.1)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)

    async def check(self, backend: Backend) -> None:
        """Probe once and apply the result to the registry."""
        adapter = self.adapters.get(backend.type) or self.adapters["generic"]
        started = time.perf_counter()
        slots: int | None = None  # what the probe says of its capacity (llama.cpp's slots)
        try:
            if (missing := auth.missing_key(backend)) is not None:
                raise ProbeError(missing)  # no request: it could only be refused
            listing = await adapter.probe(self.client, backend)
            models = acceptable(backend, listing.models)
            if backend.expose:
                models = [m for m in models if m.id in backend.expose]
            slots = listing.slots
            if backend.context_length:
                # replace, never mutate: adapters may cache and share Model objects
                models = [
                    dataclasses.replace(m, context_length=backend.context_length) for m in models
                ]
            elif backend.cloud and any(m.context_length is None for m in models):
                models = await listed_context(backend.type, models)
            error = None
        except ProbeError as exc:
            models, error = [], str(exc)
        except TimeoutError:
            if backend.pending_requests:
                # Busy, not down: single-slot servers (llama.cpp) answer probes only between
                # generations. Live requests have their own timeouts to judge it by.
                log.debug("probe of busy backend %s timed out; not counted", backend.name)
                return
            models, error = [], f"probe timed out after {self.config.timeout_seconds:g}s"
        elapsed = time.perf_counter() - started
        for observer in self.observers:
            observer(backend, elapsed, error is None)
        if self.registry.get_backend(backend.id) is not backend:
            return  # removed while probing
        self.apply(backend, error, models if error is None else None, elapsed, slots)

    def traffic_succeeded(self, backend: Backend) -> None:
        """A request succeeded on a backend that was not healthy (panic routing): it counts
        toward recovery as a good probe would, without waiting for the next probe."""
        if backend.status is BackendStatus.HEALTHY:
            return
        backend.consecutive_successes += 1
        backend.consecutive_failures = 0
        after = next_status(backend.status, True, backend.consecutive_successes, 0, self.config)
        if after is not backend.status:
            self.registry.update_status(backend.id, after, None)
            log.info("backend %s is %s (a request succeeded on it)", backend.name, after.value)

    def apply(
        self,
        backend: Backend,
        error: str | None,
        models: list[Model] | None,
        elapsed: float,
        slots: int | None = None,
    ) -> None:
        ok = error is None
        backend.last_health_check = time.time()
        if ok:
            backend.consecutive_successes += 1
            backend.consecutive_failures = 0
            backend.probe_latency_ms = elapsed * 1000
            # A live-traffic penalty is not lifted by a good probe: a backend can answer its
            # probe and still hang on chat. It lapses after one probe interval.
            self.registry.update_models(backend.id, models or [], slots=slots)
        else:
            backend.consecutive_failures += 1
            backend.consecutive_successes = 0
        before = backend.status
        after = next_status(
            before, ok, backend.consecutive_successes, backend.consecutive_failures, self.config
        )
        self.registry.update_status(backend.id, after, error)
        if after is not before:
            if ok:
                log.info(
                    "backend %s is %s (%d models, probe %.0f ms)",
                    backend.name,
                    after.value,
                    len(backend.models),
                    elapsed * 1000,
                )
            else:
                log.info("backend %s is %s: %s", backend.name, after.value, error)


async def listed_context(provider: str, models: list[Model]) -> list[Model]:
    """A cloud provider whose listing gives no context length (OpenAI's): the one the
    bundled price list gives, looked up in a thread (the package's first import takes
    ~0.3 s). Unknown models stay unknown, which routing reads as "may fit"."""
    unknown = [m.id for m in models if m.context_length is None]
    windows = await asyncio.to_thread(
        lambda: {model: pricing.context_window(provider, model) for model in unknown}
    )
    return [
        dataclasses.replace(m, context_length=windows[m.id]) if windows.get(m.id) else m
        for m in models
    ]


def acceptable(backend: Backend, models: list[Model]) -> list[Model]:
    """A backend's listing as far as it can be trusted: model ids a client could ask for
    (at most 256 characters, no control characters: they end up in headers, logs and label
    values) and at most MAX_MODELS of them (a hostile listing must not fill memory)."""
    kept = [m for m in models if len(m.id) <= MAX_MODEL_NAME and not CONTROL_CHARS.search(m.id)]
    if len(kept) != len(models) or len(kept) > MAX_MODELS:
        log.warning(
            "backend %s lists %d models; ignored: %d with unusable ids, %d beyond %d",
            backend.name,
            len(models),
            len(models) - len(kept),
            max(0, len(kept) - MAX_MODELS),
            MAX_MODELS,
        )
    return kept[:MAX_MODELS]
