"""``Fleet``: the lifecycle API's checks, the operations, demand and recommendations.

Built once by the app (see docs/fleet.md for the wiring) from the ``[fleet]`` section, the
registry, a transport to backends and a clock (Unix seconds; tests pass their own, so no
test sleeps through an hour). ``start()`` restores the demand history and, when
``fleet.enabled``, starts the analysis loop; ``stop()`` ends the loop and running
operations (they fail with a reason) and saves the history.

Requests are counted by ``observe``, a request-record sink: off the request path, only for
models the registry knows. Lifecycle actions check what they can at once (unknown backend
or model: 404; a type that cannot: 501; a busy model: 409) and otherwise answer with an
operation that runs in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from nexus.config import FleetConfig
from nexus.errors import BackendUnreachable, InvalidRequest, NexusError, NotFound
from nexus.fleet.demand import Demand, DemandStore, MemoryStore
from nexus.fleet.errors import Conflict, NotSupported, OperationFailed
from nexus.fleet.http import BackendHTTP
from nexus.fleet.lifecycle import Lifecycle, Residency, refusal
from nexus.fleet.llamacpp import LlamaCppLifecycle
from nexus.fleet.lmstudio import LMStudioLifecycle
from nexus.fleet.ollama import OllamaLifecycle, full_name
from nexus.fleet.operations import Operation, Operations
from nexus.fleet.recommend import (
    Capacity,
    GiB,
    Placement,
    Recommendation,
    forecast,
    gb,
    place,
)
from nexus.fleet.workflows import Runner, in_flight
from nexus.records import RequestRecord
from nexus.registry import Backend, Registry
from nexus.transport import Transport

log = logging.getLogger("nexus.fleet")

# The first analysis waits for the first probes to fill the registry, not a whole interval.
FIRST_ANALYSIS_SECONDS = 60.0
# Pulls at once: a download shares the backend's bandwidth and disk with the others, and
# each holds a connection and a task in Nexus. One more is a 409 naming those that run.
MAX_PULLS_PER_BACKEND = 2
MAX_PULLS = 8


class Fleet:
    def __init__(
        self,
        config: FleetConfig,
        registry: Registry,
        transport: Transport,
        *,
        vram_gb: Mapping[str, float] | None = None,
        store: DemandStore | None = None,
        clock: Callable[[], float] = time.time,
        changed: Callable[[Backend], None] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.vram_gb = dict(vram_gb or {})  # backend name -> GB (GiB) it holds models in
        self.store = store or MemoryStore()
        self.clock = clock
        self.http = BackendHTTP(transport)
        self.adapters: dict[str, Lifecycle] = {
            "ollama": OllamaLifecycle(config),
            "lmstudio": LMStudioLifecycle(config),
            "llamacpp": LlamaCppLifecycle(config),
        }
        self.demand = Demand(config.history_days)
        self.ops = Operations(config.max_operations, clock)
        self.max_pulls_per_backend = MAX_PULLS_PER_BACKEND
        self.max_pulls = MAX_PULLS
        self.runner = Runner(
            config, registry, self.http, self.adapters, self.hot, changed or (lambda _: None)
        )
        self.recs: dict[str, Recommendation] = {}
        self.footprints: dict[str, int] = {}  # model -> most bytes seen loaded anywhere
        self.backends: list[dict[str, Any]] = []  # memory per backend at the last analysis
        self.analyzed_at: float | None = None
        self._loop: asyncio.Task[None] | None = None

    # -- start and stop ---------------------------------------------------------------

    async def start(self) -> None:
        if not self.config.enabled:
            return
        snapshot = await self.store.load()
        if snapshot is not None:
            self.demand.restore(snapshot)
        self._loop = asyncio.create_task(self._analyze_periodically(), name="fleet-analysis")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        await self.ops.stop()
        if self.config.enabled:
            self.demand.prune(self.clock(), self.config.hot_window_seconds)
            try:
                await self.store.save(self.demand.snapshot())
            except Exception:  # a store that fails must not stop the rest of the shutdown
                log.exception("fleet: demand history not saved")

    async def _analyze_periodically(self) -> None:
        every = self.config.analysis_interval_seconds
        await asyncio.sleep(min(every, FIRST_ANALYSIS_SECONDS))
        while True:
            try:
                await self.analyze()
            except Exception:  # the next pass may do better; the loop must not die
                log.exception("fleet analysis failed")
            await asyncio.sleep(every)

    # -- demand -------------------------------------------------------------------------

    def observe(self, record: RequestRecord) -> None:
        """Request-record sink: counts the request for its model (as routed)."""
        answered = record.backend if 0 < record.status < 400 else ""
        when = record.timestamp + record.duration_seconds
        self.record(record.routed_model or record.model, when, answered)

    def record(self, model: str, when: float, backend: str = "") -> None:
        """One request for ``model`` finished at ``when``, answered by ``backend`` (if any).
        Models the registry does not know are not counted: memory stays bounded."""
        if not self.config.enabled or not self.registry.has_model(model):
            return
        self.demand.add(model, when)
        if backend:
            self.demand.answered(backend, model, when)

    def hot(self, backend: str, model: str) -> bool:
        last = self.demand.last_answered(backend, model)
        return last is not None and self.clock() - last <= self.config.hot_window_seconds

    # -- lifecycle actions ------------------------------------------------------------

    async def load(self, backend_ref: str, model: str, *, pull: bool = False) -> Operation:
        backend = self._backend(backend_ref)
        adapter = await self._adapter(backend)
        if pull and adapter.pull_unsupported:
            raise NotSupported(
                f"backend {backend.name} ({adapter.kind}) cannot pull: {adapter.pull_unsupported}"
            )
        listed = self._listed(backend, model)
        if listed is None and not pull:
            hint = "" if adapter.pull_unsupported else " (add --pull to download it first)"
            raise NotFound(f"backend {backend.name} does not list model {model!r}{hint}")
        pulling = listed is None  # pull is set (else NotFound above)
        if pulling:
            self._check_pulls(backend)
        model = listed or _key(backend, model)
        op = Operation("load", model, backend.name, self.clock(), pull=pull, pulling=pulling)
        return self.ops.start(op, self.runner.load)

    async def unload(self, backend_ref: str, model: str) -> Operation:
        backend = self._backend(backend_ref)
        await self._adapter(backend)
        listed = self._require(backend, model)
        self._refuse_busy(backend, listed)
        op = Operation("unload", listed, backend.name, self.clock())
        return self.ops.start(op, self.runner.unload)

    async def migrate(self, model: str, source_ref: str, target_ref: str) -> Operation:
        source, target = self._backend(source_ref), self._backend(target_ref)
        if source is target:
            raise InvalidRequest("'from' and 'to' name the same backend", param="to")
        await self._adapter(source)
        await self._adapter(target)
        listed = self._require(source, model)
        if self._listed(target, listed) is None:
            raise NotFound(
                f"backend {target.name} does not list model {listed!r}: load it there "
                "first (with --pull if it must be downloaded)"
            )
        op = Operation("migrate", listed, target.name, self.clock(), source=source.name)
        return self.ops.start(op, self.runner.migrate)

    def operations(self) -> list[Operation]:
        return list(self.ops)

    def operation(self, op_id: str) -> Operation | None:
        return self.ops.get(op_id)

    def _backend(self, ref: str) -> Backend:
        backend = self.registry.find(ref)
        if backend is None:
            raise NotFound(f"no backend with id, name or URL {ref[:200]!r}")
        return backend

    async def _adapter(self, backend: Backend) -> Lifecycle:
        adapter = self.adapters.get(backend.type)
        if adapter is None:
            raise refusal(backend)
        try:
            await adapter.check(self.http, backend)
        except OperationFailed as exc:
            raise BackendUnreachable(str(exc)) from None
        return adapter

    def _listed(self, backend: Backend, model: str) -> str | None:
        """The id ``backend`` lists ``model`` under ("llama3" is Ollama's "llama3:latest")."""
        for name in (model, _key(backend, model)):
            if name in backend.models:
                return name
        return None

    def _require(self, backend: Backend, model: str) -> str:
        listed = self._listed(backend, model)
        if listed is None:
            raise NotFound(f"backend {backend.name} does not list model {model!r}")
        return listed

    def _check_pulls(self, backend: Backend) -> None:
        """Conflict when as many pulls as may run at once already run (or are about to),
        on this backend or in all."""
        pulling = [op for op in self.ops if op.pulling and not op.done][::-1]  # oldest first
        here = [op.id for op in pulling if op.backend == backend.name]
        if len(here) >= self.max_pulls_per_backend:
            raise Conflict(
                f"{backend.name} is already pulling ({', '.join(here)}), as many models as a "
                f"backend pulls at once ({self.max_pulls_per_backend}): try again when one ends",
                context={"pulling": here, "limit": self.max_pulls_per_backend},
            )
        if len(pulling) >= self.max_pulls:
            ids = [op.id for op in pulling]
            raise Conflict(
                f"{len(ids)} pulls already run ({', '.join(ids)}), as many as run at once in "
                f"all ({self.max_pulls}): try again when one ends",
                context={"pulling": ids, "limit": self.max_pulls},
            )

    @staticmethod
    def _refuse_busy(backend: Backend, model: str) -> None:
        busy = in_flight(backend, model)
        if busy:
            raise Conflict(
                f"unloading {model} from {backend.name} now could cut {busy} request(s) in "
                "flight there: try again when they finish (an unload never cuts a request)",
                context={"in_flight": busy},
            )

    # -- recommendations --------------------------------------------------------------

    def recommendations(self) -> list[Recommendation]:
        now = self.clock()
        return [r for r in self.recs.values() if r.expires_at > now]

    def status(self) -> dict[str, Any]:
        """What GET /admin/fleet/recommendations answers (and the dashboard can show)."""
        return {
            "enabled": self.config.enabled,
            "auto_apply": self.config.auto_apply,
            "headroom_percent": self.config.headroom_percent,
            "analyzed_at": self.analyzed_at,
            "recommendations": [r.to_dict() for r in self.recommendations()],
            "backends": self.backends,
        }

    async def apply(self, rec_id: str) -> Operation:
        rec = next((r for r in self.recommendations() if r.id == rec_id), None)
        if rec is None:
            raise NotFound(f"no current recommendation {rec_id[:100]!r} (it may have expired)")
        if rec.operation:
            raise Conflict(f"recommendation {rec.id} was applied already by {rec.operation}")
        backend = self._backend(rec.backend)
        await self._adapter(backend)
        model, evict = _key(backend, rec.model), tuple(_key(backend, m) for m in rec.evict)
        op = Operation(
            "load", model, backend.name, self.clock(), evict=evict, recommendation=rec.id
        )
        self.ops.start(op, self.runner.load)
        rec.operation = op.id
        return op

    async def analyze(self) -> list[Recommendation]:
        """One pass: what is loaded where, what demand is coming, what to load where."""
        now = self.clock()
        config = self.config
        self.demand.prune(now, config.hot_window_seconds)
        residencies = await self._residencies()
        known = set(self.registry.model_ids())
        self.footprints = {m: n for m, n in self.footprints.items() if m in known}
        for residency in residencies.values():
            for model, size in residency.loaded.items():
                if size is not None:
                    self.footprints[model] = max(size, self.footprints.get(model, 0))
        capacities = self._capacities(residencies)
        forecasts = [
            f
            for m in self.demand.counts
            if m in known and (f := forecast(self.demand, m, now, config))
        ]
        self.backends = [_view(c, config.headroom_percent) for c in capacities]
        placements = place(
            forecasts,
            capacities,
            self._warm(residencies),
            self.footprints,
            {f.model: f.per_hour for f in forecasts},
            config,
        )
        fresh = self._merge(placements, now)
        self.analyzed_at = now
        if config.auto_apply:
            for rec in fresh:
                try:
                    await self.apply(rec.id)
                except NexusError as exc:
                    log.info("fleet: could not apply %s: %s", rec.id, exc.message)
        await self.store.save(self.demand.snapshot())
        return self.recommendations()

    async def _residencies(self) -> dict[str, Residency]:
        """What each healthy backend that can say holds in memory, by backend name."""
        asked = [b for b in self.registry if b.routable and b.type in self.adapters]

        async def ask(backend: Backend) -> Residency | None:
            try:
                return await self.adapters[backend.type].residency(self.http, backend)
            except OperationFailed as exc:
                log.debug("fleet: no memory report from %s: %s", backend.name, exc)
                return None

        answers = await asyncio.gather(*(ask(b) for b in asked))
        return {b.name: r for b, r in zip(asked, answers, strict=True) if r is not None}

    def _warm(self, residencies: dict[str, Residency]) -> set[str]:
        """Models loaded somewhere now. A healthy backend that does not say what it holds
        (vLLM, a cloud, a single-model llama.cpp) counts as holding every model it lists."""
        warm: set[str] = set()
        for backend in self.registry:
            if not backend.routable:
                continue
            residency = residencies.get(backend.name)
            warm |= set(backend.models) if residency is None else set(residency.loaded)
        return warm

    def _capacities(self, residencies: dict[str, Residency]) -> list[Capacity]:
        """Backends a recommendation may target: memory size configured, what they hold
        reported with sizes."""
        capacities = []
        for name, residency in residencies.items():
            backend = self.registry.find(name)
            total = self.vram_gb.get(name, 0.0)
            sizes = residency.loaded.values()
            if backend is None or total <= 0 or any(s is None for s in sizes):
                continue
            loaded = {m: s for m, s in residency.loaded.items() if s is not None}
            hot = {m for m in loaded if in_flight(backend, m) or self.hot(name, m)}
            capacities.append(Capacity(name, int(total * GiB), loaded, dict(residency.sizes), hot))
        return capacities

    def _merge(self, placements: list[Placement], now: float) -> list[Recommendation]:
        """Replaces the recommendations with this pass's: a repeat keeps its id (and is not
        logged again); an applied one stays listed until it expires."""
        current = {r.key: r for r in self.recommendations()}
        expires = now + self.config.analysis_interval_seconds
        fresh: list[Recommendation] = []
        recs: dict[str, Recommendation] = {}
        for p in placements:
            reason = p.reason(self.config.headroom_percent)
            f = p.forecast
            rec = current.pop((f.model, p.backend, p.evict), None)
            if rec is None:
                rec = Recommendation(
                    f.model,
                    p.backend,
                    p.evict,
                    reason,
                    f.confidence,
                    f.per_hour,
                    p.need,
                    now,
                    expires,
                )
                fresh.append(rec)
                log.info("fleet: new recommendation %s: %s", rec.id, reason)
            else:
                rec.reason, rec.confidence, rec.per_hour = reason, f.confidence, f.per_hour
                rec.need, rec.expires_at = p.need, expires
            recs[rec.id] = rec
        recs.update({r.id: r for r in current.values() if r.operation})
        self.recs = recs
        return fresh


def _key(backend: Backend, model: str) -> str:
    """The name operations know ``model`` by on ``backend``: one spelling per model, so
    that Ollama's "llama3" and "llama3:latest" are one model to the operations' conflicts."""
    return full_name(model) if backend.type == "ollama" else model


def _view(cap: Capacity, headroom_percent: float) -> dict[str, Any]:
    return {
        "backend": cap.name,
        "vram_gb": gb(cap.total),
        "used_gb": gb(sum(cap.loaded.values())),
        "free_gb": gb(max(0, cap.free(headroom_percent))),
        "loaded": sorted(cap.loaded),
        "hot": sorted(cap.hot),
    }
