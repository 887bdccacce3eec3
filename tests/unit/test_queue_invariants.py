"""The queue (F18) against random histories (Hypothesis stateful testing).

The app is built by ``build_app`` as ``nexus serve`` builds it, with the queue on and small
backends (one or two slots); only the transport is a double whose answers are held until
the test lets one go. Requests of random priorities arrive, answers finish, clients leave,
backends go down and come back. After every step, once the event loop has settled:

- no backend ever has more requests in flight than its slots;
- nobody waits while a backend that could serve it has room;
- Nexus's pending counts are exactly what is in flight;
- every request gets one answer at most, and once everything is let go, every request that
  stayed has had its answer: none lost, none answered twice, no slot leaked.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from nexus import config as config_mod
from nexus.app import App, build_app
from nexus.registry import BackendStatus, Model
from nexus.transport import TLS
from tests.helpers import write_config

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
PRIORITIES = ["critical", "high", "normal", "low"]


class HeldAnswer:
    """A 200 whose body comes when the test lets it go."""

    status = 200
    headers = {"content-type": "application/json"}
    content_type = "application/json"

    def __init__(self, url: str, body: bytes | None) -> None:
        self.url = url
        self.sent = orjson.loads(body or b"{}")["messages"][0]["content"]  # "priority seq"
        self.go = asyncio.Event()
        self.released = False  # Nexus is done with it (answered, or its client left)

    async def read(
        self, seconds: float | None, limit: int | None = None, *, truncate: bool = False
    ) -> bytes:
        await self.go.wait()
        return OK

    def whole(self) -> bytes | None:
        return None  # it comes when the test says

    async def read_chunk(self, seconds: float | None) -> bytes:
        return b""

    def release(self) -> None:
        self.released = True


class HoldingTransport:
    def __init__(self) -> None:
        self.held: list[HeldAnswer] = []

    async def request(
        self,
        url: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        tls: TLS | None = None,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> HeldAnswer:
        answer = HeldAnswer(url, body)
        self.held.append(answer)
        return answer

    def in_flight(self, url: str) -> int:
        return sum(1 for a in self.held if a.url == url and not a.released)

    def close(self) -> None:
        pass


class Client:
    """One request through the app, counting what it was sent back."""

    def __init__(self, app: App, priority: str, seq: int) -> None:
        self.starts: list[int] = []
        self.task = asyncio.ensure_future(self.run(app, priority, seq))

    async def run(self, app: App, priority: str, seq: int) -> None:
        content = f"{PRIORITIES.index(priority)} {seq}"
        raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "query_string": b"",
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-nexus-priority", priority.encode()),
            ],
            "client": ("127.0.0.1", 1),
            "scheme": "http",
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.starts.append(message["status"])

        await app(scope, receive, send)


class QueueMachine(RuleBasedStateMachine):
    app: App

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="nexus-queue-"))
        self.transport = HoldingTransport()
        self.clients: list[Client] = []

    @initialize(slots=st.lists(st.integers(1, 2), min_size=1, max_size=2))
    def build(self, slots: list[int]) -> None:
        backends = [
            {"name": f"b{i}", "url": f"http://b{i}.test", "type": "vllm", "max_concurrent": n}
            for i, n in enumerate(slots)
        ]
        path = write_config(self.dir, backends, queuing={"max_queue_size": 3})
        self.app = build_app(config_mod.load(path, env={}))
        registry = self.app.state.registry
        for backend in registry:
            registry.update_models(backend.id, [Model(id="m")])
            registry.update_status(backend.id, BackendStatus.HEALTHY)
        self.app.pipeline.forwarder.transport = self.transport

    def teardown(self) -> None:
        for client in self.clients:
            client.task.cancel()
        self.settle()
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def settle(self) -> None:
        async def turns() -> None:
            for _ in range(20):
                await asyncio.sleep(0)

        self.loop.run_until_complete(turns())
        self.app.state.recorder.flush()

    # -- the world -------------------------------------------------------------------------

    @rule(priorities=st.lists(st.sampled_from(PRIORITIES), min_size=1, max_size=3))
    def arrive(self, priorities: list[str]) -> None:
        """A few clients at once, each arriving after the one before is planned."""
        for priority in priorities:

            async def start(priority: str = priority) -> Client:
                return Client(self.app, priority, len(self.clients))

            self.clients.append(self.loop.run_until_complete(start()))
            self.settle()

    @rule(pick=st.integers(0, 10))
    def finish(self, pick: int) -> None:
        held = [a for a in self.transport.held if not a.go.is_set() and not a.released]
        before = len(self.transport.held)
        if held:
            held[pick % len(held)].go.set()
        self.settle()
        # Who got the freed slot: the most urgent that waited, the oldest among equals.
        served = [tuple(map(int, a.sent.split())) for a in self.transport.held[before:]]
        waiting = [
            tuple(map(int, w.ex.body["messages"][0]["content"].split())) for w in self.queued()
        ]
        for got in served:
            assert all(got <= other for other in waiting), (got, waiting)

    def queued(self) -> list[Any]:
        queue = self.app.state.queue
        assert queue is not None
        return [w for level in queue.levels for w in level]

    @rule(pick=st.integers(0, 10))
    def client_leaves(self, pick: int) -> None:
        waiting = [c for c in self.clients if not c.task.done()]
        if waiting:
            waiting[pick % len(waiting)].task.cancel()
        self.settle()

    @rule(index=st.integers(0, 2), healthy=st.booleans())
    def health_changes(self, index: int, healthy: bool) -> None:
        backends = list(self.app.state.registry)
        backend = backends[index % len(backends)]
        status = BackendStatus.HEALTHY if healthy else BackendStatus.UNHEALTHY
        self.app.state.registry.update_status(backend.id, status)
        self.settle()

    @rule()
    def everything_finishes(self) -> None:
        for backend in self.app.state.registry:
            self.app.state.registry.update_status(backend.id, BackendStatus.HEALTHY)
        for _ in range(20):
            for answer in self.transport.held:
                answer.go.set()
            self.settle()
        for client in self.clients:
            assert client.task.done(), "a request was left waiting"
        assert self.app.state.queue is not None and len(self.app.state.queue) == 0
        assert {b.pending_requests for b in self.app.state.registry} == {0}

    # -- what must hold ----------------------------------------------------------------------

    @invariant()
    def never_more_than_its_slots(self) -> None:
        for backend in self.app.state.registry:
            in_flight = self.transport.in_flight(backend.url)
            assert in_flight <= (backend.max_concurrent or 0)
            assert backend.pending_requests == in_flight

    @invariant()
    def nobody_waits_while_there_is_room(self) -> None:
        queue = self.app.state.queue
        assert queue is not None
        if len(queue):
            for backend in self.app.state.registry:
                if backend.status is BackendStatus.HEALTHY:
                    assert backend.busy, f"{backend.name} has room and {len(queue)} wait"

    @invariant()
    def one_answer_at_most(self) -> None:
        for client in self.clients:
            assert len(client.starts) <= 1
            if client.task.done() and not client.task.cancelled():
                assert len(client.starts) == 1, "a request finished without an answer"
                assert client.starts[0] in (200, 503), client.starts


QueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_queue_loses_nothing = QueueMachine.TestCase


def test_a_client_leaving_as_its_slot_is_reserved_gives_the_slot_back() -> None:
    machine = QueueMachine()
    machine.build(slots=[1])
    try:
        machine.arrive(["normal", "normal"])
        queue = machine.app.state.queue
        assert queue is not None and len(queue) == 1
        leaving = machine.clients[1]

        async def race() -> None:
            machine.transport.held[0].go.set()  # the slot frees: the waiter's is reserved
            while len(queue):
                await asyncio.sleep(0)
            leaving.task.cancel()  # ... and its client leaves before it could use it

        machine.loop.run_until_complete(race())
        machine.settle()
        assert leaving.task.cancelled() and len(machine.transport.held) == 1
        assert [b.pending_requests for b in machine.app.state.registry] == [0]
        machine.arrive(["low"])  # the slot was given back: the next one gets it
        assert len(machine.transport.held) == 2
    finally:
        machine.teardown()
