"""Registry: stable ids, the model index, counters that never go negative, JSON."""

from __future__ import annotations

import json
import random

from nexus.registry import Backend, BackendStatus, Model, Registry, backend_id


def make(name: str, *models: str) -> Backend:
    return Backend(name=name, url=f"http://127.0.0.1/{name}/", models={m: Model(m) for m in models})


def test_ids_are_stable_and_derived_from_name() -> None:
    assert make("gpu").id == make("gpu").id == backend_id("gpu")
    assert make("gpu").id != make("cpu").id
    assert make("gpu").url == "http://127.0.0.1/gpu"


def test_model_index_tracks_adds_updates_and_removals() -> None:
    reg = Registry()
    a, b = reg.add_backend(make("a", "m1", "m2")), reg.add_backend(make("b", "m2"))
    assert reg.get_backends_for_model("m2") == [a, b]
    assert reg.model_ids() == ["m1", "m2"]
    reg.update_models(a.id, [Model("m3")])
    assert reg.get_backends_for_model("m1") == []
    assert reg.get_backends_for_model("m2") == [b]
    assert reg.get_backends_for_model("m3") == [a]
    reg.remove_backend(b.id)
    assert not reg.has_model("m2")
    assert reg.find("a") is a and reg.find(a.url + "/") is a and reg.find(a.id) is a


def test_healthy_views() -> None:
    reg = Registry()
    a, b = reg.add_backend(make("a", "m1")), reg.add_backend(make("b", "m2"))
    reg.update_status(a.id, BackendStatus.HEALTHY)
    reg.update_status(b.id, BackendStatus.UNHEALTHY, "connection refused")
    assert reg.get_healthy_backends() == [a]
    assert reg.healthy_model_ids() == ["m1"]
    assert b.last_error == "connection refused"


def test_pending_never_negative_under_random_interleaving() -> None:
    reg = Registry()
    backend = reg.add_backend(make("a"))
    rnd = random.Random(7)
    ops = ["inc"] * 500 + ["dec"] * 600
    rnd.shuffle(ops)
    for op in ops:
        (reg.increment_pending if op == "inc" else reg.decrement_pending)(backend)
        assert backend.pending_requests >= 0
    assert backend.total_requests == 500


def test_latency_is_a_rolling_average() -> None:
    reg = Registry()
    backend = reg.add_backend(make("a"))
    reg.update_latency(backend, 100)
    assert backend.avg_latency_ms == 100
    for _ in range(50):
        reg.update_latency(backend, 10)
    assert 10 <= backend.avg_latency_ms < 11


def test_serialises_to_json() -> None:
    reg = Registry()
    reg.add_backend(make("a", "m1"))
    data = json.loads(json.dumps(reg.to_dict()))
    (entry,) = data["backends"]
    assert entry["name"] == "a" and entry["status"] == "unknown"
    assert entry["models"][0]["id"] == "m1"
    assert set(entry["models"][0]["capabilities"]) == {
        "chat",
        "vision",
        "tools",
        "json_mode",
        "embeddings",
    }


def test_listeners_hear_of_a_change_only() -> None:
    """``on_change`` wakes the queue (a dispatch over every waiter): a probe that finds the
    backend as it was (equal, not the same, Model objects) tells nobody; a change of status,
    models, a model's capabilities or context, or the reported slots does. ``generation``
    moves only when which backends serve which model changes."""
    reg = Registry()
    heard: list[Backend] = []
    reg.on_change.append(heard.append)
    a = reg.add_backend(make("a"))
    assert heard == [a]
    reg.update_models(a.id, [Model("m", context_length=8192)])
    assert len(heard) == 2
    generation = reg.generation
    for _ in range(3):
        reg.update_models(a.id, [Model("m", context_length=8192)])
        reg.update_status(a.id, BackendStatus.UNKNOWN)
    assert len(heard) == 2 and reg.generation == generation
    reg.update_models(a.id, [Model("m", context_length=8192)], slots=2)
    assert len(heard) == 3

    vision = Model("m", context_length=8192, supports_vision=True)
    shorter = Model("m", context_length=4096, supports_vision=True)
    # (models, slots, whether listeners hear of it, whether the index changes)
    steps: list[tuple[list[Model], int | None, bool, bool]] = [
        ([vision], 2, True, False),  # a capability
        ([shorter], 2, True, False),  # the context
        ([shorter], 4, True, False),  # the slots
        ([shorter], None, True, False),  # it no longer says
        ([shorter, Model("n")], None, True, True),  # a model more
        ([Model("n"), shorter], None, False, False),  # the same, listed in another order
        ([], None, True, True),
    ]
    for models, slots, told, reindexed in steps:
        heard.clear()
        generation = reg.generation
        reg.update_models(a.id, models, slots=slots)
        assert heard == ([a] if told else []), models
        assert (reg.generation != generation) is reindexed, models
        assert a.reported_slots == slots and set(a.models) == {m.id for m in models}
        reg.update_models(a.id, models, slots=slots)  # the next probe: nothing new
        assert heard == ([a] if told else []), models
    assert not reg.has_model("n") and not reg.has_model("m")
