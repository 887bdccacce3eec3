"""Recommendations (F19): which model to load where before its demand arrives, and why.

**Forecast.** A model's demand at an hour is the mean of its request counts at that hour of
the day on past days of the same kind (weekdays with weekdays, weekends with weekends), over
the kept history. Its confidence is the share of those days on which at least
``min_requests`` arrived, counted as ``hits / (days + 1)`` so that one lucky day is not
certainty. A model is wanted when this hour or the next reaches both ``min_requests`` and
``min_confidence``; the window runs on while the following hours do.

**Placement.** A wanted model that is loaded nowhere goes to a healthy backend that has it
on disk and reports what it holds, where it fits in the backend's memory (``vram_gb``) minus
``headroom_percent`` minus what is loaded. Failing that, it may go where unloading idle
models makes room: never a hot one (answered on that backend within
``hot_window_seconds``, or serving requests there right now: Nexus counts requests in flight
per backend and model, so a request for another model on the same backend holds nothing),
and only models whose own forecast is below both ``min_requests`` and the wanted model's.
The most wanted model is placed first, and each placement uses up the room it takes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from nexus.config import FleetConfig
from nexus.fleet.demand import Demand, local_hour, weekend

GiB = 2**30
MAX_WINDOW_HOURS = 24


@dataclass(slots=True)
class Forecast:
    model: str
    per_hour: float  # requests expected per hour over the window
    confidence: float
    hits: int  # past days of the same kind when the demand showed up at the window's start
    days: int  # past days of the same kind in the history
    start: int  # local hour the window starts
    hours: int  # its length

    def window(self) -> str:
        kind = "weekends" if weekend(self.start) else "weekdays"
        end = (self.start + self.hours) % 24
        return f"on {kind} {self.start % 24:02d}:00-{end:02d}:00"


@dataclass(slots=True)
class Capacity:
    """One backend as a placement sees it."""

    name: str
    total: int  # bytes it can hold (vram_gb)
    loaded: dict[str, int]  # model -> bytes, what is in memory now
    sizes: dict[str, int]  # model -> bytes, for every model it has
    hot: set[str]  # loaded models that must stay (answered lately, or serving requests now)

    def free(self, headroom_percent: float) -> int:
        return int(self.total * (1 - headroom_percent / 100)) - sum(self.loaded.values())


@dataclass(slots=True)
class Recommendation:
    model: str
    backend: str
    evict: tuple[str, ...]
    reason: str
    confidence: float
    per_hour: float
    need: int  # bytes
    created_at: float
    expires_at: float
    id: str = field(default_factory=lambda: "rec-" + secrets.token_hex(4))
    operation: str = ""  # the operation that applied it

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return self.model, self.backend, self.evict

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": "load",
            "model": self.model,
            "backend": self.backend,
            "evict": list(self.evict),
            "reason": self.reason,
            "confidence": self.confidence,
            "requests_per_hour": self.per_hour,
            "need_gb": gb(self.need),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "operation": self.operation or None,
        }


def gb(n: int) -> float:
    return round(n / GiB, 1)


def forecast(demand: Demand, model: str, now: float, config: FleetConfig) -> Forecast | None:
    """The model's demand window starting this hour or the next, or None when neither
    qualifies."""
    first = local_hour(now)
    for start in (first, first + 1):
        mean, hits, days = _expected(demand, model, start, config)
        if _qualifies(mean, hits, days, config):
            means = [mean]
            while len(means) < MAX_WINDOW_HOURS:
                more, more_hits, more_days = _expected(demand, model, start + len(means), config)
                if not _qualifies(more, more_hits, more_days, config):
                    break
                means.append(more)
            per_hour = round(sum(means) / len(means), 1)
            confidence = round(hits / (days + 1), 2)
            return Forecast(model, per_hour, confidence, hits, days, start, len(means))
    return None


def _expected(demand: Demand, model: str, hour: int, config: FleetConfig) -> tuple[float, int, int]:
    """(mean requests, days it reached min_requests, days seen) at ``hour``'s time of day on
    the past days of its kind."""
    if demand.since is None:
        return 0.0, 0, 0
    kind = weekend(hour)
    first_day = max(demand.since // 24, hour // 24 - config.history_days)
    total = hits = days = 0
    for day in range(first_day, hour // 24):
        past = day * 24 + hour % 24
        if weekend(past) is not kind:
            continue
        n = demand.count(model, past)
        total, days = total + n, days + 1
        hits += n >= config.min_requests
    return (total / days if days else 0.0), hits, days


def _qualifies(mean: float, hits: int, days: int, config: FleetConfig) -> bool:
    return days > 0 and mean >= config.min_requests and hits / (days + 1) >= config.min_confidence


@dataclass(slots=True)
class Placement:
    forecast: Forecast
    backend: str
    evict: tuple[str, ...]
    need: int
    free: int  # bytes free for it (after headroom, before it loads and after evictions)

    def reason(self, headroom_percent: float) -> str:
        f = self.forecast
        days = "weekend days" if weekend(f.start) else "weekdays"
        text = (
            f"{f.model} on {self.backend}: {f.per_hour:g} requests/h expected {f.window()} "
            f"(seen on {f.hits} of {f.days} past {days}), loaded nowhere; "
            f"needs {gb(self.need)} GB of {gb(self.free)} GB free "
            f"(keeping {headroom_percent:g}% headroom)"
        )
        if self.evict:
            text += f", after unloading idle {', '.join(self.evict)}"
        return text


def place(
    wanted: list[Forecast],
    capacities: list[Capacity],
    warm: set[str],
    footprints: dict[str, int],
    idle_demand: dict[str, float],
    config: FleetConfig,
) -> list[Placement]:
    """Where each wanted model that is loaded nowhere (``warm``) should go, if anywhere.
    ``idle_demand`` is the forecast demand of loaded models (absent: none expected)."""
    placements = []
    for f in sorted(wanted, key=lambda f: (-f.per_hour, f.model)):
        if f.model in warm:
            continue
        best: tuple[tuple[int, int], Capacity, Placement] | None = None
        for cap in capacities:
            need = footprints.get(f.model) or cap.sizes.get(f.model)
            if f.model not in cap.sizes or not need:
                continue
            option = _fit(f, cap, need, idle_demand, config)
            if option is not None:
                rank = (len(option.evict), -option.free)  # no evictions first, then most room
                if best is None or rank < best[0]:
                    best = (rank, cap, option)
        if best is not None:
            _, cap, option = best
            for model in option.evict:
                del cap.loaded[model]
            cap.loaded[f.model] = option.need
            cap.hot.add(f.model)  # placed in this pass: a later placement must not undo it
            warm.add(f.model)
            placements.append(option)
    return placements


def _fit(
    f: Forecast, cap: Capacity, need: int, idle_demand: dict[str, float], config: FleetConfig
) -> Placement | None:
    free = cap.free(config.headroom_percent)
    if need <= free:
        return Placement(f, cap.name, (), need, free)
    ceiling = min(config.min_requests, f.per_hour)
    idle = sorted(
        (m for m in cap.loaded if m not in cap.hot and idle_demand.get(m, 0.0) < ceiling),
        key=lambda m: (idle_demand.get(m, 0.0), -cap.loaded[m], m),
    )
    evict: list[str] = []
    for model in idle:
        if need <= free:
            break
        evict.append(model)
        free += cap.loaded[model]
    if need > free:
        return None
    return Placement(f, cap.name, tuple(evict), need, free)
