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
