"""Demand history: requests per model per local hour, and when each model last answered where.

Memory is bounded by construction. Only models the registry knows are counted (a client
cannot grow it with made-up names), each keeps at most ``history_days * 24`` hourly
counters (the oldest goes when a new hour starts), and "last answered" is kept only for
(backend, model) pairs that answered within the hot window. Hours are local: demand follows
the owner's working day, not UTC.

The history survives restarts through a :class:`DemandStore`: ``snapshot()`` is plain
JSON-able data (dicts, lists, numbers, strings) that ``restore()`` reads back, checking
every part of it, since a store is outside Nexus's control.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

HOUR = 3600
SNAPSHOT_VERSION = 1

Snapshot = dict[str, Any]


def local_hour(when: float) -> int:
    """Hours since the epoch on the local clock: ``% 24`` is the hour of the day."""
    return int((when + time.localtime(when).tm_gmtoff) // HOUR)


def weekend(hour: int) -> bool:
    """Whether a local hour (as ``local_hour`` counts them) falls on a Saturday or Sunday."""
    return (hour // 24 + 3) % 7 >= 5  # 1970-01-01 was a Thursday (Monday = 0)


class DemandStore(Protocol):
    """Where the history goes between runs (the state store, once it is wired)."""

    async def load(self) -> Snapshot | None: ...

    async def save(self, snapshot: Snapshot) -> None: ...


class MemoryStore:
    """Keeps the last snapshot in memory: it outlives a Fleet, not the process."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    async def load(self) -> Snapshot | None:
        return self.snapshot

    async def save(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


class Demand:
    def __init__(self, history_days: int) -> None:
        self.keep_hours = history_days * 24
        self.counts: dict[str, dict[int, int]] = {}  # model -> local hour -> requests
        self.served: dict[tuple[str, str], float] = {}  # (backend, model) -> last answer
        self.since: int | None = None  # the first local hour with history

    def add(self, model: str, when: float) -> None:
        hour = local_hour(when)
        buckets = self.counts.setdefault(model, {})
        if hour not in buckets and len(buckets) >= self.keep_hours:
            del buckets[min(buckets)]
        buckets[hour] = buckets.get(hour, 0) + 1
        if self.since is None or hour < self.since:
            self.since = hour

    def answered(self, backend: str, model: str, when: float) -> None:
        key = (backend, model)
        self.served[key] = max(when, self.served.get(key, when))

    def last_answered(self, backend: str, model: str) -> float | None:
        return self.served.get((backend, model))

    def count(self, model: str, hour: int) -> int:
        return self.counts.get(model, {}).get(hour, 0)

    def prune(self, now: float, hot_window: float) -> None:
        """Drops hours older than the history and answers older than the hot window."""
        oldest = local_hour(now) - self.keep_hours
        for model in list(self.counts):
            buckets = self.counts[model]
            for hour in [h for h in buckets if h < oldest]:
                del buckets[hour]
            if not buckets:
                del self.counts[model]
        if self.since is not None:
            self.since = max(self.since, oldest)
        for key in [k for k, when in self.served.items() if now - when > hot_window]:
            del self.served[key]

    def snapshot(self) -> Snapshot:
        return {
            "version": SNAPSHOT_VERSION,
            "since": self.since,
            "counts": {m: [[h, n] for h, n in sorted(b.items())] for m, b in self.counts.items()},
            "served": [[b, m, when] for (b, m), when in self.served.items()],
        }

    def restore(self, snapshot: Snapshot) -> None:
        """Adds a snapshot's history (entries of the wrong shape are skipped)."""
        if not isinstance(snapshot, dict) or snapshot.get("version") != SNAPSHOT_VERSION:
            return
        since = snapshot.get("since")
        if isinstance(since, int) and _whole(since):
            self.since = since if self.since is None else min(since, self.since)
        counts = snapshot.get("counts")
        for model, pairs in counts.items() if isinstance(counts, dict) else ():
            if not isinstance(model, str) or not isinstance(pairs, list):
                continue
            for pair in pairs[-self.keep_hours :]:
                if (
                    isinstance(pair, list)
                    and len(pair) == 2
                    and _whole(pair[0])
                    and _whole(pair[1])
                ):
                    buckets = self.counts.setdefault(model, {})
                    buckets[pair[0]] = buckets.get(pair[0], 0) + pair[1]
            buckets = self.counts.get(model, {})
            for hour in sorted(buckets)[: max(0, len(buckets) - self.keep_hours)]:
                del buckets[hour]
        served = snapshot.get("served")
        for entry in served if isinstance(served, list) else ():
            if isinstance(entry, list) and len(entry) == 3:
                backend, model, when = entry
                if isinstance(backend, str) and isinstance(model, str) and _number(when):
                    self.answered(backend, model, float(when))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
