"""Demand history (nexus.fleet.demand): bounded memory, and a snapshot that survives."""

from __future__ import annotations

import time

import orjson
import pytest

from nexus.config import FleetConfig
from nexus.fleet.demand import Demand, MemoryStore, local_hour, weekend
from nexus.fleet.service import Fleet
from nexus.registry import Backend, Model, Registry
from nexus.transport import Pool

NOW = time.mktime((2025, 6, 9, 10, 0, 0, 0, 0, -1))  # a Monday, 10:00 local


def test_local_hours_and_weekends() -> None:
    assert local_hour(NOW) % 24 == 10
    assert not weekend(local_hour(NOW))
    assert weekend(local_hour(NOW - 86400))  # Sunday
    assert not weekend(local_hour(NOW - 3 * 86400))  # Friday


def test_each_model_keeps_at_most_history_days_of_hours() -> None:
    demand = Demand(history_days=1)
    for hour in range(100):
        demand.add("m", NOW + hour * 3600)
    assert len(demand.counts["m"]) == 24
    assert min(demand.counts["m"]) == local_hour(NOW + 76 * 3600)
    demand.prune(NOW + 200 * 3600, hot_window=300)
    assert demand.counts == {}


def test_last_answers_are_kept_only_within_the_hot_window() -> None:
    demand = Demand(14)
    demand.answered("box", "m", NOW - 400)
    demand.answered("box", "n", NOW - 100)
    demand.answered("box", "n", NOW - 200)  # an older answer never moves it back
    assert demand.last_answered("box", "n") == NOW - 100
    demand.prune(NOW, hot_window=300)
    assert demand.served == {("box", "n"): NOW - 100}


def test_snapshot_is_json_and_restores_what_it_held() -> None:
    demand = Demand(14)
    demand.add("m", NOW)
    demand.add("m", NOW + 1)
    demand.answered("box", "m", NOW)
    text = orjson.dumps(demand.snapshot())
    again = Demand(14)
    again.restore(orjson.loads(text))
    assert again.counts == demand.counts == {"m": {local_hour(NOW): 2}}
    assert again.served == demand.served and again.since == demand.since


@pytest.mark.parametrize(
    "junk",
    [
        None,
        [],
        {"version": 99, "counts": {"m": [[1, 1]]}},
        {"version": 1, "since": -5, "counts": {"m": [[1, "x"], [True, 1], "no", [1]]}},
        {"version": 1, "counts": [], "served": [["box", "m"], [1, "m", 2], ["b", "m", "t"]]},
    ],
)
def test_restore_skips_what_it_cannot_read(junk: object) -> None:
    demand = Demand(14)
    demand.restore(junk)  # type: ignore[arg-type]
    assert demand.counts == {} and demand.served == {} and demand.since is None


def registry_with(models: list[str]) -> Registry:
    registry = Registry()
    backend = registry.add_backend(Backend(name="box", url="http://127.0.0.1:9"))
    registry.update_models(backend.id, [Model(id=m) for m in models])
    return registry


def test_only_known_models_are_counted_and_nothing_when_disabled() -> None:
    transport = Pool(1, 1)  # never used: nothing here talks to a backend
    fleet = Fleet(FleetConfig(enabled=True), registry_with(["known"]), transport)
    for i in range(1000):
        fleet.record(f"made-up-{i}", NOW, "box")
    fleet.record("known", NOW, "box")
    assert list(fleet.demand.counts) == ["known"]
    assert list(fleet.demand.served) == [("box", "known")]
    off = Fleet(FleetConfig(enabled=False), registry_with(["known"]), transport)
    off.record("known", NOW, "box")
    assert off.demand.counts == {}


async def test_a_restarted_fleet_reads_the_history_back() -> None:
    store = MemoryStore()
    config = FleetConfig(enabled=True)
    first = Fleet(config, registry_with(["known"]), Pool(1, 1), store=store, clock=lambda: NOW)
    await first.start()
    first.record("known", NOW - 60, "box")
    await first.stop()
    assert store.snapshot is not None
    second = Fleet(config, registry_with(["known"]), Pool(1, 1), store=store, clock=lambda: NOW)
    await second.start()
    try:
        assert second.demand.counts == {"known": {local_hour(NOW - 60): 1}}
        assert second.hot("box", "known")  # served a minute ago, before the restart
    finally:
        await second.stop()
