"""Forecasts and placements (nexus.fleet.recommend): pure functions, time given."""

from __future__ import annotations

import time

from nexus.config import FleetConfig
from nexus.fleet.demand import Demand
from nexus.fleet.recommend import Capacity, Forecast, GiB, forecast, place

CONFIG = FleetConfig(enabled=True, min_requests=10, min_confidence=0.5)


def local(day: int, hour: int, minute: int = 0) -> float:
    """June 2025, local time. The 2nd to the 6th and the 9th are weekdays; 7, 8 weekend."""
    return time.mktime((2025, 6, day, hour, minute, 0, 0, 0, -1))


def history(demand: Demand, model: str, days: list[int], hours: range, per_hour: int) -> None:
    for day in days:
        for hour in hours:
            for i in range(per_hour):
                demand.add(model, local(day, hour, i * 59 // per_hour))


def test_forecast_takes_the_same_hours_of_past_days_of_the_same_kind() -> None:
    demand = Demand(14)
    history(demand, "qwen", [2, 3, 4, 5, 6], range(9, 12), 12)  # weekdays 09-12
    history(demand, "qwen", [7, 8], range(9, 12), 100)  # the weekend is another pattern
    f = forecast(demand, "qwen", local(9, 8, 30), CONFIG)  # Monday 08:30: the next hour
    assert f is not None
    assert (f.per_hour, f.hits, f.days, f.hours) == (12, 5, 5, 3)
    assert f.confidence == round(5 / 6, 2)  # five days of five is not certainty
    assert f.window() == "on weekdays 09:00-12:00"
    # Saturday 08:30: the weekend pattern (two days seen), not the weekdays'.
    weekend = forecast(demand, "qwen", local(14, 8, 30), CONFIG)
    assert weekend is not None and weekend.per_hour == 100 and weekend.days == 2
    assert weekend.window() == "on weekends 09:00-12:00"


def test_no_forecast_without_enough_demand_or_regularity() -> None:
    demand = Demand(14)
    history(demand, "rare", [2, 3, 4, 5, 6], range(9, 10), 5)  # below min_requests
    history(demand, "once", [6], range(9, 10), 40)  # one day in five
    monday = local(9, 8, 30)
    assert forecast(demand, "rare", monday, CONFIG) is None
    once = forecast(demand, "once", monday, CONFIG)
    assert once is None  # mean 8/h, and 1 hit in 5 days
    assert forecast(demand, "rare", local(9, 6, 0), CONFIG) is None  # 07:00 is not 09:00
    assert forecast(demand, "never-seen", monday, CONFIG) is None


def test_history_older_than_history_days_does_not_count() -> None:
    demand = Demand(2)
    history(demand, "qwen", [2, 3, 4, 5, 6], range(9, 10), 20)
    f = forecast(demand, "qwen", local(9, 8, 30), FleetConfig(min_requests=10, history_days=2))
    assert f is None  # only Saturday and Sunday are within two days of Monday


def want(model: str, per_hour: float) -> Forecast:
    return Forecast(model, per_hour, 0.8, 4, 4, 0, 1)


def test_place_uses_free_memory_after_headroom_and_the_most_wanted_first() -> None:
    sizes = {"a": 10 * GiB, "b": 8 * GiB, "c": 8 * GiB}
    big = Capacity("big", 24 * GiB, {}, sizes, set())
    # 24 GiB less 20 % is 19.2: a (10), then b (8) fit; c (8) finds 1.2 left, and may not
    # unload a or b, placed in the same pass.
    wanted = [want("c", 30), want("b", 40), want("a", 50)]
    first, second = place(wanted, [big], set(), {}, {}, CONFIG)
    assert (first.forecast.model, second.forecast.model) == ("a", "b")
    assert first.free == int(24 * GiB * 0.8) and second.free == int(24 * GiB * 0.8) - 10 * GiB
    assert first.evict == second.evict == ()
    assert big.loaded == {"a": 10 * GiB, "b": 8 * GiB}


def test_place_never_targets_a_warm_model_or_a_backend_without_it() -> None:
    box = Capacity("box", 24 * GiB, {}, {"a": GiB}, set())
    assert place([want("a", 50)], [box], {"a"}, {}, {}, CONFIG) == []
    assert place([want("z", 50)], [box], set(), {}, {}, CONFIG) == []


def test_place_unloads_only_idle_cold_models_with_less_demand() -> None:
    def box(hot: set[str]) -> Capacity:
        loaded = {"idle": 6 * GiB, "hot": 6 * GiB}
        return Capacity("box", 16 * GiB, dict(loaded), {"new": 6 * GiB, **loaded}, hot)

    # 12.8 GiB after headroom, 12 loaded: "new" (6) fits once one of them goes.
    (p,) = place([want("new", 30)], [box({"hot"})], set(), {}, {}, CONFIG)
    assert p.evict == ("idle",) and p.free == int(16 * GiB * 0.8) - 6 * GiB
    assert place([want("new", 30)], [box({"hot", "idle"})], set(), {}, {}, CONFIG) == []
    # An idle model with demand of its own coming stays too.
    assert place([want("new", 30)], [box({"hot"})], set(), {}, {"idle": 15}, CONFIG) == []
    # A backend with room beats one that needs an unload.
    roomy = Capacity("roomy", 16 * GiB, {}, {"new": 6 * GiB}, set())
    (p,) = place([want("new", 30)], [box(set()), roomy], set(), {}, {}, CONFIG)
    assert p.backend == "roomy" and p.evict == ()


def test_a_known_footprint_beats_the_size_on_disk() -> None:
    box = Capacity("box", 16 * GiB, {}, {"a": 4 * GiB}, set())
    # Seen loaded elsewhere at 14 GiB (a long context): it does not fit in 12.8.
    assert place([want("a", 50)], [box], set(), {"a": 14 * GiB}, {}, CONFIG) == []
