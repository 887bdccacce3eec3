"""F13's promises, checked against random histories (Hypothesis stateful testing).

The app is built by ``build_app`` from a random config (backends with random zones, tiers,
models and capacities; random fallback chains), as ``nexus serve`` builds it; only the
transport is a double, which records what every backend was sent. Backends fail, recover,
break, fill up; the admin's overflow rule flips; requests come with random histories and
routing headers. After every request, whatever happened:

- no request reaches a backend of another zone, except a restricted chat overflowing to an
  open backend with ``fresh-context`` on, and then what it carries is its system message(s)
  and last user message only;
- no backend is sent a model of a lower tier than the requested model's;
- strict requests are sent the requested model only;
- a request a healthy, working backend of its zone and tier serves directly is answered.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nexus import config as config_mod
from nexus.app import App, build_app
from nexus.registry import BackendStatus, Model
from nexus.transport import Disconnected
from tests.fakes.transport import ScriptedTransport, call
from tests.helpers import write_config

MODELS = ("m1", "m2", "m3")
JSON = {"content-type": "application/json"}
OK = orjson.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
)
BROKEN = Disconnected("backend closed the connection before answering", answered=False)


@dataclass
class Spec:
    zone: str
    tier: int
    models: list[str]
    model_tiers: dict[str, int]
    capacity: int


specs = st.lists(
    st.builds(
        Spec,
        zone=st.sampled_from(["restricted", "open"]),
        tier=st.integers(1, 5),
        models=st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True),
        model_tiers=st.dictionaries(st.sampled_from(MODELS), st.integers(1, 5), max_size=2),
        capacity=st.sampled_from([0, 1]),
    ),
    min_size=2,
    max_size=4,
)
fallbacks = st.dictionaries(
    st.sampled_from(MODELS), st.lists(st.sampled_from(MODELS), max_size=2), max_size=3
)
MODES = {
    "": [],
    "strict": [(b"x-nexus-strict", b"true")],
    "flexible": [(b"x-nexus-flexible", b"TRUE")],
    "both": [(b"x-nexus-strict", b"true"), (b"x-nexus-flexible", b"true")],
    "bad": [(b"x-nexus-flexible", b"yes")],
}


def conversation(turns: int, tools: bool) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "be brief"}]
    for turn in range(turns - 1):
        messages.append({"role": "user", "content": f"question {turn}"})
        if tools:
            call_id = f"call_{turn}"
            function = {"name": "look", "arguments": "{}"}
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": call_id, "type": "function", "function": function}],
                }
            )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": "private"})
        messages.append({"role": "assistant", "content": f"answer {turn}"})
    messages.append({"role": "user", "content": "last question"})
    return messages


class Routing(RuleBasedStateMachine):
    app: App
    double: ScriptedTransport

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="nexus-routing-"))
        self.specs: list[Spec] = []
        self.requests = 0

    @initialize(backends=specs, chains=fallbacks, overflow=st.booleans())
    def build(self, backends: list[Spec], chains: dict[str, list[str]], overflow: bool) -> None:
        # Always a model both zones serve: the case every zone rule is about.
        for spec, zone in zip(backends, ("restricted", "open"), strict=False):
            spec.zone = zone
            spec.models = sorted({"m1", *spec.models})
        self.specs = backends
        entries = [
            {
                "name": f"b{i}",
                "url": f"http://b{i}.test",
                "type": "vllm",
                "zone": spec.zone,
                "tier": spec.tier,
                "model_tiers": spec.model_tiers,
                "max_concurrent": spec.capacity,
            }
            for i, spec in enumerate(backends)
        ]
        privacy = {"cross_zone_overflow": "fresh-context" if overflow else "block"}
        routing = {"fallbacks": chains, "max_retries": 5, "privacy": privacy}
        # (The queue has its own state machine; here a full backend takes requests anyway.)
        path = write_config(self.dir, entries, routing=routing, queuing={"enabled": False})
        self.app = build_app(config_mod.load(path, env={}))
        registry = self.app.state.registry
        for i, spec in enumerate(backends):
            backend = registry.find(f"b{i}")
            assert backend is not None
            registry.update_models(backend.id, [Model(id=m) for m in spec.models])
            backend.status = BackendStatus.HEALTHY
        self.double = ScriptedTransport({f"http://b{i}.test": (200, OK, JSON) for i in range(9)})
        self.app.pipeline.forwarder.transport = self.double

    def teardown(self) -> None:
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the world changes ----------------------------------------------------------------

    def backend(self, index: int) -> Any:
        backend = self.app.state.registry.find(f"b{index % len(self.specs)}")
        assert backend is not None
        return backend

    @rule(index=st.integers(0, 3), status=st.sampled_from(list(BackendStatus)))
    def set_status(self, index: int, status: BackendStatus) -> None:
        self.backend(index).status = status

    @rule(index=st.integers(0, 3), broken=st.booleans())
    def break_or_mend(self, index: int, broken: bool) -> None:
        url = self.backend(index).url
        self.double.script[url] = BROKEN if broken else (200, OK, JSON)

    @rule(index=st.integers(0, 3), full=st.booleans())
    def fill_or_free(self, index: int, full: bool) -> None:
        backend = self.backend(index)
        backend.pending_requests = (backend.max_concurrent or 0) if full else 0

    @rule(zone=st.sampled_from(["restricted", "open"]))
    def zone_outage(self, zone: str) -> None:
        """Every backend of a zone down and failing (the restricted one: overflow's case)."""
        for backend in self.app.state.registry:
            if backend.zone == zone:
                backend.status = BackendStatus.UNHEALTHY
                self.double.script[backend.url] = BROKEN

    @rule()
    def flip_overflow_rule(self) -> None:
        router = self.app.pipeline.planner.router
        router.fresh_context = not router.fresh_context

    # -- requests -------------------------------------------------------------------------

    @rule(
        model=st.sampled_from([*MODELS, "unknown"]),
        mode=st.sampled_from(list(MODES)),
        turns=st.sampled_from([1, 3, 3]),
        tools=st.booleans(),
    )
    def request(self, model: str, mode: str, turns: int, tools: bool) -> None:
        calls_before = len(self.double.calls)
        body = {"model": model, "messages": conversation(turns, tools)}
        status, headers, _ = self.loop.run_until_complete(call(self.app, body, MODES[mode]))
        self.requests += 1
        sent = list(
            zip(self.double.calls[calls_before:], self.double.bodies[calls_before:], strict=True)
        )
        if mode in ("both", "bad"):
            assert status == 400 and not sent
            return
        registry = self.app.state.registry
        chain = [model, *self.app.state.config.routing.fallbacks.get(model, [])]
        decider = next((m for m in chain if registry.get_backends_for_model(m)), model)
        holders = registry.get_backends_for_model(decider)
        zone = "restricted" if any(b.zone == "restricted" for b in holders) else "open"
        required = min((b.tier_of(decider) for b in holders if b.zone == zone), default=3)
        overflow = self.app.pipeline.planner.router.fresh_context
        for (url, _), raw in sent:
            backend = next(b for b in registry if b.url == url)
            payload = orjson.loads(raw or b"{}")
            assert backend.tier_of(payload["model"]) >= required, (backend.name, payload)
            if mode == "strict":
                assert payload["model"] == model
            if backend.zone != zone:
                assert zone == "restricted" and overflow, (zone, backend.name)
                roles = [m["role"] for m in payload["messages"]]
                assert set(roles) <= {"system", "user"} and roles.count("user") == 1, roles
                assert payload["messages"][-1]["content"] == "last question"
        event(
            f"{zone} request: {status}"
            + (" stripped" if "x-nexus-context-stripped" in headers else "")
        )
        if status == 200:
            answered = registry.find(headers["x-nexus-backend"])
            assert answered is not None
            served = headers.get("x-nexus-fallback-model", model)
            assert answered.tier_of(served) >= required
            assert headers["x-nexus-privacy-zone"] == answered.zone
            assert (headers.get("x-nexus-context-stripped") == "true") == (answered.zone != zone)
        direct = [
            b
            for b in registry.get_backends_for_model(model)
            if b.zone == zone
            and b.status is BackendStatus.HEALTHY
            and self.double.script[b.url] != BROKEN
        ]
        if direct:
            assert status == 200, (status, [b.name for b in direct])

    @invariant()
    def nothing_left_pending(self) -> None:
        if self.specs:
            for i, backend in enumerate(self.app.state.registry):
                assert backend.pending_requests in (0, backend.max_concurrent or 0), i

    @precondition(lambda self: self.requests > 0)
    @invariant()
    def every_request_recorded(self) -> None:
        assert self.app.state.in_flight == 0


Routing.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_routing_keeps_zones_and_tiers = Routing.TestCase


def test_a_failed_overflow_comes_back_to_its_zone_with_the_whole_context() -> None:
    """Found by the machine above: a restricted request overflowed (fresh context) to the
    open backend, which failed; the restricted backend at capacity (queue off, so it takes
    requests anyway) must serve it then, with its whole history, not a 503."""
    machine = Routing()
    try:
        spec = Spec(zone="restricted", tier=1, models=["m1"], model_tiers={}, capacity=0)
        full = Spec(zone="restricted", tier=1, models=["m1"], model_tiers={}, capacity=1)
        machine.build(backends=[spec, Spec(**vars(spec)), full], chains={}, overflow=True)
        machine.break_or_mend(broken=True, index=0)  # b0: restricted, fails
        machine.break_or_mend(broken=True, index=1)  # b1: open, fails
        machine.fill_or_free(full=True, index=2)  # b2: restricted, at capacity
        body = {"model": "m1", "messages": conversation(3, False)}
        status, headers, _ = machine.loop.run_until_complete(call(machine.app, body, {}))
        assert status == 200 and headers["x-nexus-backend"] == "b2"
        assert "x-nexus-context-stripped" not in headers
        last = orjson.loads(machine.double.bodies[-1] or b"{}")
        assert len(last["messages"]) == len(body["messages"])  # the history is back
    finally:
        machine.teardown()
