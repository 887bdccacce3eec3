"""The zone and tier a model's requests keep are kept between requests, and forgotten as soon
as which backends serve the model changes."""

from __future__ import annotations

from nexus.config import RoutingConfig
from nexus.registry import Backend, BackendStatus, Model, Registry
from nexus.routing.requirements import inspect_chat
from nexus.routing.router import Router

REQ = inspect_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def serving(registry: Registry, backend: Backend, models: list[str]) -> None:
    if registry.get_backend(backend.id) is None:
        registry.add_backend(backend)
    registry.update_models(backend.id, [Model(id=m) for m in models])
    registry.update_status(backend.id, BackendStatus.HEALTHY)


def test_rules_follow_the_backends_that_serve_the_model() -> None:
    registry = Registry()
    strong = Backend(name="strong", url="http://10.0.0.1:8000", type="vllm", tier=4)
    weak = Backend(name="weak", url="http://10.0.0.2:8000", type="vllm", tier=2, zone="open")
    serving(registry, strong, ["m"])
    router = Router(registry, RoutingConfig())
    first = router.plan("m", REQ)
    assert (first.zone, first.required_tier) == ("restricted", 4)
    serving(registry, weak, ["m"])  # a second, weaker backend of the model: in its own zone
    assert router.plan("m", REQ).zone == "restricted"
    serving(registry, strong, ["other"])  # the strong one stops serving it
    after = router.plan("m", REQ)
    assert (after.zone, after.required_tier) == ("open", 2)
    registry.update_status(weak.id, BackendStatus.UNHEALTHY)  # health is not a rule
    assert router.plan("m", REQ).required_tier == 2


def test_a_plans_models_follow_which_models_are_served() -> None:
    # "fast" is an alias of "big"; a model served directly wins over an alias of the same name.
    registry = Registry()
    box = Backend(name="box", url="http://10.0.0.1:8000", type="vllm")
    serving(registry, box, ["big"])
    config = RoutingConfig(aliases={"fast": "big"}, fallbacks={"big": ["small"]})
    router = Router(registry, config)
    assert router.plan("fast", REQ).models == ["big", "small"]
    assert router.plan("fast", REQ, "strict").models == ["big"]  # each mode its own
    serving(registry, box, ["big", "fast"])  # now a model of that name is served itself
    assert router.plan("fast", REQ).models == ["fast"]
    plan = router.plan("big", REQ)
    plan.models.append("mutated")  # a request's plan is its own: the next one starts clean
    assert router.plan("big", REQ).models == ["big", "small"]


def test_names_nobody_serves_are_not_kept() -> None:
    registry = Registry()
    serving(registry, Backend(name="box", url="http://10.0.0.1:8000", type="vllm"), ["m"])
    router = Router(registry, RoutingConfig())
    for i in range(1000):  # names a client made up
        assert router.plan(f"made-up-{i}", REQ).models == [f"made-up-{i}"]
    router.plan("m", REQ)
    assert len(router._shapes) == 1
