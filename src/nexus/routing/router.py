"""Backend selection (F06, F07, F08, F13): which backend, and which model on it, serves a
request.

``Router.plan`` turns the requested name into the ordered list of models to try (alias
resolution, then the fallback chain) and decides the request's privacy zone and required
tier; ``Router.select`` picks the best capable, healthy backend of that zone and tier for
one of them, skipping backends already tried. When nothing is left it widens, in this
order: flexible substitutes (``X-Nexus-Flexible``), panic (unhealthy backends, once each),
fresh-context overflow to the open zone (only if the admin allows it). Everything reads
in-memory registry state: no I/O, no awaits, O(candidates). See docs/routing.md.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nexus.budget import NORMAL, Budget
from nexus.config import CLOUD_TYPES, RoutingConfig, WeightsConfig
from nexus.errors import (
    BudgetExceeded,
    InvalidRequest,
    ModelNotFound,
    NexusError,
    NoHealthyBackend,
    RateLimited,
)
from nexus.quality import QualityTracker
from nexus.registry import Backend, BackendStatus, DiscoverySource, Model, Registry
from nexus.routing import aliases, privacy, tiers
from nexus.routing.affinity import Affinity
from nexus.routing.privacy import OPEN, RESTRICTED
from nexus.routing.requirements import Requirements

log = logging.getLogger("nexus.routing")
CHANCE = random.Random()  # its own: the random module's shared generator is left alone

MAX_MODELS_IN_HINT = 20
ZONE_RULES = {
    RESTRICTED: "open zone: a restricted request stays on restricted backends",
    OPEN: "restricted zone: an open request never overflows into it",
}
HEALTHY = BackendStatus.HEALTHY
STRICT, FLEXIBLE = "strict", "flexible"
NO_COMPLETIONS = frozenset({"anthropic", "google"})  # no legacy /v1/completions in their APIs
DRAINING = BackendStatus.DRAINING
MDNS = DiscoverySource.MDNS


MIN_WAKE_SECONDS = 0.001


class Busy(Exception):
    """Every backend that could serve the request is at capacity or out of its rate limit,
    and tier-equivalent fallbacks too. Raised only with the queue on: the request waits."""

    def __init__(self, backends: list[Backend], retry_after: float) -> None:
        super().__init__("every capable backend is busy")
        self.backends = backends
        self.retry_after = retry_after  # until a rate-limited one has a token (0: none is limited)


@dataclass(slots=True)
class Route:
    backend: Backend
    model: str  # the model name the backend is asked for
    reason: str
    fallback: bool = False
    panic: bool = False  # an unhealthy backend, tried because no healthy one can serve
    stripped: bool = False  # fresh-context overflow: only system + last user message sent
    reserved: bool = False  # the queue took the backend's slot (and token) for this request


@dataclass(slots=True)
class Plan:
    requested: str
    models: list[str]  # models[0] is the (alias-resolved) primary, the rest fallbacks
    tried: set[tuple[str, str]] = field(default_factory=set)  # (backend id, model)
    excluded: dict[str, str] = field(default_factory=dict)
    panic: bool = False  # no healthy backend could serve: unhealthy ones are being tried
    # F13: "restricted" when a restricted backend serves the requested model: then only
    # restricted backends may serve this request, whatever failover or fallback follows.
    zone: str = OPEN
    zone_blocked: int = 0  # backends of the other zone a zone rule kept from serving it
    budget_blocked: int = 0  # cloud backends the budget kept from serving it
    required_tier: int = tiers.DEFAULT_TIER  # nothing weaker may answer
    mode: str = ""  # "" | "strict" | "flexible" (the client's headers)
    overflow: bool = False  # fresh-context overflow to the open zone is allowed
    overflowing: bool = False  # ... and has begun: open backends only, history stripped
    substituted: bool = False  # flexible substitutes were added to ``models``
    full: list[Backend] = field(default_factory=list)  # capable, but busy or rate-limited
    sticky: bool = False  # conversation affinity applies (several backends could serve)
    conversation: int | None = None  # the conversation's hash, when sticky
    continued: bool = False  # ... and this is not its first turn
    allows: Callable[[str], bool] | None = None  # the models a tenant may use (auth on)

    def restrict(self, allows: Callable[[str], bool]) -> None:
        """Only models ``allows`` allows may answer: fallbacks too, and flexible substitutes.
        (The requested model itself was checked before: the tenant may use it.)"""
        self.allows = allows
        self.models[1:] = [model for model in self.models[1:] if allows(model)]


@dataclass(frozen=True, slots=True)
class Shape:
    """What every plan for one requested name and mode starts from: the models to try, the
    zone and the tier. It stays the same until the backends serving which model change (the
    registry's generation), so it is worked out once, not on every request."""

    models: tuple[str, ...]
    zone: str
    required_tier: int
    decider: str  # the model whose backends decided the zone and the tier
    holders: int  # how many backends serve it


def smart_score(backend: Backend, weights: WeightsConfig, error_rate: float = 0.0) -> float:
    """F06's score: higher is better. Latency is what real requests observed (a rolling
    average; time to first byte for streams). A backend no request has reached yet counts as
    fast, so it gets tried and measured: probe round trips say little about generation. A
    backend whose recent requests failed loses up to the whole weight of all three terms."""
    pending = backend.pending_requests
    # Whole points (10 ms each): backends within the same 10 ms tie and share the load
    # instead of a 0.1 ms difference sending everything to one of them.
    latency = backend.avg_latency_ms // 10
    # (Conditional expressions rather than min(): this runs once per candidate per request.)
    score = (
        (100 - backend.priority) * weights.priority
        + (100 - (pending if pending < 100 else 100)) * weights.load
        + (100 - (latency if latency < 100 else 100)) * weights.latency
    )
    if error_rate:
        # Whole percentage points, like latency: noise below 0.5 % does not break ties.
        score -= round(error_rate * 100) * (weights.priority + weights.load + weights.latency)
    return score


def serves_kind(backend: Backend, req: Requirements) -> bool:
    """Whether the backend's kind can serve the request at all (its API has the endpoint)."""
    if req.only_type is not None and backend.type != req.only_type:
        return False
    return not (req.completions and backend.type in NO_COMPLETIONS)


def prefer_local(pool: list[Backend]) -> list[Backend]:
    """Local backends first: a cloud backend serves only when no local one in the pool can,
    unless its priority is better than theirs (an explicit choice of the admin's)."""
    local = [b for b in pool if not b.cloud]
    if not local or len(local) == len(pool):
        return pool
    best = min(b.priority for b in local)
    return [b for b in pool if not b.cloud or b.priority < best]


def with_room(pool: list[Backend]) -> list[Backend]:
    """The backends that can start the request now. A backend at capacity would only queue
    it behind its own slots, so one with room serves it, whatever their priorities; when
    all are full, those with the shortest queue (requests beyond capacity) share it."""
    room: list[Backend] = []
    least, shortest = None, []
    for b in pool:
        capacity = b.max_concurrent or b.reported_slots
        if not capacity or b.pending_requests < capacity:
            room.append(b)  # (no capacity known: it says nothing of being full)
        elif not room:
            over = b.pending_requests - capacity
            if least is None or over < least:
                least, shortest = over, [b]
            elif over == least:
                shortest.append(b)
    return room or shortest


def unmet(model: Model, req: Requirements) -> str | None:
    """Why ``model`` cannot serve ``req``, or None. Unknown capabilities (None) pass."""
    if req.embeddings:
        if model.supports_embeddings is False:
            return "not an embedding model"
    elif not model.supports_chat:
        return "not a chat model"
    if req.completions and model.supports_completions is False:
        return "no legacy completions"
    if req.needs_vision and model.supports_vision is False:
        return "no vision"
    if req.needs_tools and model.supports_tools is False:
        return "no tool calling"
    if req.needs_json_mode and model.supports_json_mode is False:
        return "no JSON mode"
    if model.context_length and req.estimated_tokens > model.context_length:
        return f"context {model.context_length} < ~{req.estimated_tokens} tokens"
    return None


class Router:
    def __init__(
        self,
        registry: Registry,
        config: RoutingConfig,
        quality: QualityTracker | None = None,
        *,
        queueing: bool = False,
    ) -> None:
        self.registry = registry
        self.config = config
        self.quality = quality
        # With the queue on, a backend at capacity takes no more: the request waits (Busy).
        # Off, it takes them all the same (into its own queue), as before there was one.
        self.queueing = queueing
        self.budget: Budget | None = None  # set when a budget is configured (F14)
        self.affinity = Affinity(config.affinity_ttl_seconds, config.affinity_max_conversations)
        self.fresh_context = config.privacy.cross_zone_overflow == privacy.FRESH_CONTEXT
        self._rotation = itertools.count()
        self._tier_warned: set[tuple[str, str]] = set()
        self._shapes: dict[tuple[str, str], Shape] = {}  # (requested, mode) -> its shape
        self._shapes_generation = registry.generation
        strategies: dict[str, Callable[[list[Backend], str], Backend]] = {
            "smart": self._pick_smart,
            "round_robin": self._pick_round_robin,
            "priority_only": self._pick_priority,
            "random": self._pick_random,
        }
        self._pick = strategies[config.strategy]

    def plan(self, requested: str, req: Requirements, mode: str = "") -> Plan:
        """The models to try, in order, and the rules every answer must keep: its zone and
        its tier. ``mode`` is the client's: strict (the requested model only) or flexible
        (any model of the same tier or higher when the requested one cannot serve)."""
        shape = self._shape(requested, mode)
        zone = shape.zone
        plan = Plan(requested, list(shape.models))
        plan.zone, plan.mode, plan.required_tier = zone, mode, shape.required_tier
        if shape.holders > 1:
            plan.sticky = self.config.affinity or zone == RESTRICTED
        # Only a chat's history can be stripped; a prompt or an embedding input is all content.
        plan.overflow = self.fresh_context and zone == RESTRICTED and req.is_chat
        return plan

    def _shape(self, requested: str, mode: str) -> Shape:
        """The plan's start for ``requested``, kept until the registry's generation changes.
        Names no backend serves are not kept: clients choose those names."""
        if self._shapes_generation != self.registry.generation:
            self._shapes.clear()  # a backend came, went or changed its models
            self._shapes_generation = self.registry.generation
        shape = self._shapes.get((requested, mode))
        if shape is None:
            shape = self._new_shape(requested, mode)
            if shape.holders:
                self._shapes[(requested, mode)] = shape
        return shape

    def _new_shape(self, requested: str, mode: str) -> Shape:
        cfg = self.config
        primary = aliases.resolve(requested, cfg.aliases, self.registry.has_model)
        models = [primary]
        if mode != STRICT:
            for name in cfg.fallbacks.get(requested) or cfg.fallbacks.get(primary) or ():
                target = aliases.resolve(name, cfg.aliases, self.registry.has_model)
                if target not in models:
                    models.append(target)
        # The requested model's backends decide the zone and the tier; for a model no
        # backend lists (yet), the first of its fallbacks that one does.
        decider, holders = primary, self.registry.get_backends_for_model(primary)
        for model in models[1:] if not holders else ():
            if holders := self.registry.get_backends_for_model(model):
                decider = model
                break
        zone = privacy.request_zone(holders)
        in_zone = [b for b in holders if b.zone == zone]
        required = tiers.required_tier(in_zone, decider)
        if log.isEnabledFor(logging.DEBUG):  # (once per shape: every plan made from it is alike)
            if primary != requested:
                log.debug("alias %s -> %s", requested, primary)
            log.debug("zone %s for %s: %s", zone, decider, privacy.zone_reason(zone, holders))
        return Shape(tuple(models), zone, required, decider, len(holders))

    def select(self, plan: Plan, req: Requirements, attempts_per_model: int) -> Route:
        """The next backend to try for ``plan``, or a NexusError explaining why none can
        (``Busy`` when capable backends exist but all are full: the queue's business)."""
        while True:
            route = self._next(plan, req, attempts_per_model)
            if route is not None:
                return route
            # (Unhealthy backends tried in panic never make a request wait: it is answered.)
            if plan.full and not plan.panic and (plan.substituted or plan.mode != FLEXIBLE):
                raise self._full(plan)
            if not self._widen(plan, req):
                if plan.budget_blocked and self.budget is not None:
                    raise self._over_budget(plan, self.budget)
                raise self._no_route(plan, req)

    def _over_budget(self, plan: Plan, budget: Budget) -> Exception:
        """Only a cloud backend could serve, and the budget says no: the admin's action."""
        until = budget.cycle_end.date().isoformat()
        if budget.action == "queue" and self.queueing:
            return Busy([], 0.0)  # waits for local capacity (a backend that comes up)
        context = {
            **self._context(plan),
            "budget_status": budget.status(),
            "budget_remaining_usd": round(budget.remaining, 6),
        }
        details = "; ".join(f"{name}: {why}" for name, why in plan.excluded.items())
        message = (
            f"no local backend can serve model '{plan.requested}' and the monthly budget keeps "
            f"cloud backends out (${budget.spent:.2f} of ${budget.limit:.2f} spent; the cycle "
            f"resets on {until}; excluded: {details})"
        )
        if budget.action == "reject":
            return BudgetExceeded(message, budget.seconds_to_reset(), context=context)
        return NoHealthyBackend(message, context=context)

    def _full(self, plan: Plan) -> Exception:
        now = time.monotonic()
        full = list(dict.fromkeys(plan.full))
        waits = [b.limiter.wait_seconds(now) for b in full if b.limiter and b.limited(now)]
        # When the first rate-limited one has a token again (at capacity ones say so when a
        # request ends, and count here only if out of tokens too: else a timer would spin).
        # Never 0 while one is limited: a token that came due since the check above must
        # still wake the queue, or its waiters wait for nothing (seen in CI).
        retry_after = max(min(waits), MIN_WAKE_SECONDS) if waits else 0.0
        if self.queueing:
            return Busy(full, retry_after)
        names = ", ".join(b.name for b in full)
        return RateLimited(
            f"every backend that can serve model '{plan.requested}' is at its rate limit "
            f"({names}); retry in {retry_after:.1f} s",
            retry_after,
        )

    def _widen(self, plan: Plan, req: Requirements) -> bool:
        """The next stage, when the current one has nothing left to try; False at the end.

        Panic routing (as Envoy does it): when no healthy backend can serve any model of the
        plan and none was tried, the unhealthy ones that serve it are tried, once each,
        before giving up. Health checks lag behind a backend that just came back; a request
        that finds it up is better than a 503 until the recovery threshold passes."""
        if plan.mode == FLEXIBLE and not plan.substituted:
            plan.substituted = True
            substitutes = self._substitutes(plan, req)
            if substitutes:
                plan.models.extend(substitutes)
                return True
        if not plan.panic and not plan.tried and not plan.overflowing:
            plan.panic = True
            return True
        if plan.overflow and not plan.overflowing:
            plan.overflowing, plan.panic = True, False
            return True
        if plan.overflowing:
            # The open zone failed it too: back to the request's own zone and its whole
            # context, where a backend at capacity (queue off) still takes it.
            plan.overflowing = plan.overflow = False
            return True
        return False

    def _next(self, plan: Plan, req: Requirements, attempts_per_model: int) -> Route | None:
        now = time.monotonic()
        tried = plan.tried
        zone = OPEN if plan.overflowing else plan.zone
        if plan.full:
            plan.full.clear()
        # Past the soft limit, a cloud backend serves only when no local one can.
        thrifty = self.budget is not None and self.budget.status() != NORMAL
        for index, model in enumerate(plan.models):
            holders = self.registry.get_backends_for_model(model)
            if tried:
                used = sum(1 for b in holders if b.zone == zone and (b.id, model) in tried)
                if used >= attempts_per_model:
                    continue
            else:
                used = 0
            candidates = self._candidates(plan, model, holders, req, zone)
            if not candidates:
                continue
            if thrifty:
                candidates = [b for b in candidates if not b.cloud] or candidates
            # One pass (this runs for every request over every candidate): who can start it
            # now, who of those was not penalised lately, and whether any is a cloud backend
            # or discovered by mDNS (the rarer narrowing steps below).
            ready, fresh, mixed = [], [], False
            queueing = self.queueing
            for b in candidates:
                if (b.limiter is not None and not b.limiter.ready(now)) or (queueing and b.busy):
                    continue
                ready.append(b)
                if b.penalized_until <= now:
                    fresh.append(b)
                mixed = mixed or b.type in CLOUD_TYPES or b.discovery_source is MDNS
            if not ready:
                plan.full += candidates
                if plan.overflow and not plan.overflowing:
                    route = self._overflow(plan, model, holders, req)
                    if route is not None:
                        return route
                continue
            pool = fresh or ready
            if len(pool) > 1:
                pool = with_room(pool)
                if mixed:
                    pool = prefer_local(pool)
                    # Any LAN device can announce itself by mDNS: a discovered backend serves
                    # a model only when no configured one can (docs/security.md).
                    pool = [b for b in pool if b.discovery_source is not MDNS] or pool
            if plan.overflow and not plan.overflowing and all(b.busy for b in pool):
                route = self._overflow(plan, model, holders, req)
                if route is not None:
                    return route
            backend = self._sticky(plan, pool) if index == 0 and plan.continued else None
            if backend is not None:
                plan.tried.add((backend.id, model))
                return Route(backend, model, "affinity", panic=plan.panic)
            backend = pool[0] if len(pool) == 1 else self._pick(pool, model)
            plan.tried.add((backend.id, model))
            stripped = plan.overflowing
            if index > 0:
                log.warning(
                    "fallback for %s: using %s (%s)",
                    plan.requested,
                    model,
                    self._why(plan, plan.models[0]),
                )
                reason = "capacity-overflow" if stripped else "fallback"
                return Route(backend, model, reason, True, plan.panic, stripped)
            if stripped:
                return Route(backend, model, "capacity-overflow", stripped=True)
            if plan.panic:
                return Route(backend, model, "panic", panic=True)
            reason = self._reason(plan, model, req, backend, holders, candidates, used)
            return Route(backend, model, reason)
        return None

    def _overflow(
        self, plan: Plan, model: str, holders: Sequence[Backend], req: Requirements
    ) -> Route | None:
        """Every restricted backend of ``model`` is at capacity: an open one with room takes
        the request with a fresh context (the admin allowed it), and so would any retry."""
        now = time.monotonic()
        outside = [
            b
            for b in self._candidates(plan, model, holders, req, OPEN)
            if not b.busy and not b.limited(now)
        ]
        if not outside:
            return None
        plan.overflowing = True
        backend = self._pick(outside, model)
        plan.tried.add((backend.id, model))
        return Route(backend, model, "capacity-overflow", stripped=True)

    def _sticky(self, plan: Plan, pool: list[Backend]) -> Backend | None:
        """The backend that served this conversation's last turn, if it may serve this one:
        among the best candidates (healthy, in zone and tier, preferred) and not at capacity."""
        assert plan.conversation is not None
        last = self.affinity.get(plan.conversation)
        if last is None:
            return None
        for backend in pool:
            if backend.id == last:
                return None if backend.busy else backend
        return None

    def remember(self, plan: Plan, route: Route) -> None:
        """A turn was answered: the conversation's next turn goes to the same backend."""
        if plan.conversation is not None and not route.stripped and route.model == plan.models[0]:
            self.affinity.remember(plan.conversation, route.backend.id)

    def _substitutes(self, plan: Plan, req: Requirements) -> list[str]:
        """X-Nexus-Flexible: other models a healthy backend of the request's zone serves at
        its tier or higher, the closest tier first. Never for embeddings: another model's
        vectors are not comparable with the requested one's."""
        if req.embeddings:
            return []
        zone, required = plan.zone, plan.required_tier
        options = []
        for model in self.registry.model_ids():
            if model in plan.models or (plan.allows is not None and not plan.allows(model)):
                continue
            fit = [
                t
                for b in self.registry.get_backends_for_model(model)
                if b.routable and b.zone == zone and (t := b.tier_of(model)) >= required
            ]
            if fit:
                options.append((min(fit), model))
        return [model for _, model in sorted(options)]

    # -- strategies ---------------------------------------------------------------------

    def _pick_smart(self, candidates: list[Backend], model: str) -> Backend:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        weights = self.config.weights
        quality = self.quality
        rates = quality.error_rates(model, time.monotonic()) if quality is not None else None
        # Start at a rotating offset: ties go round, so identical idle backends share the
        # load instead of the first one taking all of it.
        offset = next(self._rotation) % count
        best, best_score = candidates[offset], -math.inf
        for i in range(offset, offset + count):
            backend = candidates[i % count]
            score = smart_score(backend, weights, rates.get(backend.name, 0.0) if rates else 0.0)
            if score > best_score:
                best, best_score = backend, score
        return best

    def _pick_round_robin(self, candidates: list[Backend], model: str) -> Backend:
        return candidates[next(self._rotation) % len(candidates)]

    @staticmethod
    def _pick_random(candidates: list[Backend], model: str) -> Backend:
        return CHANCE.choice(candidates)

    @staticmethod
    def _pick_priority(candidates: list[Backend], model: str) -> Backend:
        return min(candidates, key=lambda b: b.priority)

    # -- helpers ------------------------------------------------------------------------

    def _candidates(
        self, plan: Plan, model: str, holders: Sequence[Backend], req: Requirements, zone: str
    ) -> list[Backend]:
        out = []
        tried = plan.tried
        tokens = req.estimated_tokens
        plain = req.is_plain_chat
        panic = plan.panic
        required = plan.required_tier
        budget = self.budget
        for backend in holders:
            if tried and (backend.id, model) in tried:
                continue
            status = backend.status
            if status is not HEALTHY and (not panic or status is DRAINING):
                plan.excluded.setdefault(backend.name, status.value)
                continue
            if backend.zone != zone:
                plan.excluded[backend.name] = ZONE_RULES[zone]
                plan.zone_blocked += 1
                continue
            tiers_of = backend.model_tiers
            if (tier := tiers_of.get(model, backend.tier) if tiers_of else backend.tier) < required:
                plan.excluded[backend.name] = f"{model}: tier {tier} < required {required}"
                self._warn_tier(plan, model, tier)
                continue
            if budget is not None and backend.cloud:
                refused = budget.refuses(backend, model, req)
                if refused is not None:
                    plan.excluded[backend.name] = refused
                    plan.budget_blocked += 1
                    continue
            if not plain and not serves_kind(backend, req):
                plan.excluded[backend.name] = f"{backend.type} backends cannot serve this request"
                continue
            served = backend.models[model]
            if plain and served.supports_chat and tokens <= (served.context_length or tokens):
                out.append(backend)  # the common case, without a call per backend
                continue
            why = unmet(served, req)
            if why is not None:
                plan.excluded[backend.name] = f"{model}: {why}"
                continue
            out.append(backend)
        return out

    @staticmethod
    def _reason(
        plan: Plan,
        model: str,
        req: Requirements,
        chosen: Backend,
        holders: Sequence[Backend],
        candidates: list[Backend],
        used: int,
    ) -> str:
        if chosen.cloud and any(not b.cloud for b in holders):
            # Local backends serve the model: why did the cloud get it?
            local = [b for b in candidates if not b.cloud]
            if local:  # healthy and capable: full, or behind the cloud by the admin's priority
                return "capacity-overflow" if all(b.busy for b in local) else "best-score"
            if any(not b.cloud and unmet(b.models[model], req) for b in holders):
                return "capability-match"  # the local ones lack what the request needs
            return "capacity-overflow"  # the local ones are down (or out of zone or tier)
        if used:
            return "failover"
        if plan.zone_blocked:
            return "privacy-requirement"
        if req.needs_vision or req.needs_tools or req.needs_json_mode:
            return "capability-match"
        return "only-candidate" if len(candidates) == 1 else "best-score"

    def _warn_tier(self, plan: Plan, model: str, tier: int) -> None:
        """A configured fallback of a lower tier: said once (the pair comes from the config,
        so the set of warnings is bounded)."""
        pair = (plan.models[0], model)
        if model in plan.models[1:] and not plan.substituted and pair not in self._tier_warned:
            self._tier_warned.add(pair)
            log.warning(
                "fallback %s for %s skipped: tier %d is below the required %d",
                model,
                plan.models[0],
                tier,
                plan.required_tier,
            )

    def _why(self, plan: Plan, model: str) -> str:
        holders = self.registry.get_backends_for_model(model)
        if not holders:
            return f"no backend serves {model}"
        return "; ".join(f"{b.name}: {plan.excluded.get(b.name, 'failed')}" for b in holders)

    def _context(self, plan: Plan) -> dict[str, object]:
        """The facts a client can act on, from the registry (never parsed from text)."""
        seen: dict[str, Backend] = {}
        for model in plan.models:
            for backend in self.registry.get_backends_for_model(model):
                seen.setdefault(backend.id, backend)
        available = [
            {
                "name": b.name,
                "type": b.type,
                "zone": b.zone,
                "tier": b.tier,
                "status": b.status.value,
            }
            for b in seen.values()
            if b.zone == plan.zone
        ]
        return {
            "privacy_zone": plan.zone,
            "required_tier": plan.required_tier,
            "available_backends": available,
            "eta_seconds": None,
        }

    def _no_route(self, plan: Plan, req: Requirements) -> NexusError:
        known = [m for m in plan.models if self.registry.has_model(m)]
        if not known and len(plan.models) > 1:
            return NoHealthyBackend(
                f"no backend serves model '{plan.requested}' or any of its fallbacks "
                f"({', '.join(plan.models[1:])})"
            )
        if not known:
            # Backends that never listed models may well serve it: say so, with why.
            silent = [b for b in self.registry if not b.models and not b.routable]
            if silent:
                reasons = "; ".join(f"{b.name}: {b.last_error or b.status.value}" for b in silent)
                return NoHealthyBackend(
                    f"model '{plan.requested}' is not listed by any reachable backend; "
                    f"not reachable: {reasons}"
                )
            available = self.registry.healthy_model_ids() or self.registry.model_ids()
            servable = set(available)
            available += [
                alias
                for alias in sorted(self.config.aliases)
                if aliases.resolve(alias, self.config.aliases, self.registry.has_model) in servable
            ]
            hint = ", ".join(available[:MAX_MODELS_IN_HINT]) or "none"
            if len(available) > MAX_MODELS_IN_HINT:
                hint += f", ... ({len(available)} in all)"
            return ModelNotFound(
                f"model '{plan.requested}' not found; available models: {hint}", param="model"
            )
        details = "; ".join(f"{name}: {why}" for name, why in plan.excluded.items())
        capable_somewhere = any(
            unmet(b.models[m], req) is None and serves_kind(b, req)
            for m in known
            for b in self.registry.get_backends_for_model(m)
        )
        if plan.tried or capable_somewhere:
            what = "" if plan.tried else f" meets the request's needs ({req.describe()})"
            tried = f" after {len(plan.tried)} failed attempt(s)" if plan.tried else ""
            return NoHealthyBackend(
                f"no healthy backend{what} for model '{plan.requested}'{tried}"
                + (f" (excluded: {details})" if details else ""),
                context=self._context(plan),
            )
        return InvalidRequest(
            f"no backend for model '{plan.requested}' meets the request's needs "
            f"({req.describe()}; estimated {req.estimated_tokens} tokens): {details}",
            param="messages",
            code="capability_mismatch",
        )
