"""What each operation does, step by step, with each step's own time limit.

* load: pull first when asked and the backend lacks the model (bounded by stalls, not by
  length; the operation counts among the pulls at once until its pull ends); unload the
  idle models a recommendation makes room with (each checked cold again first); load; the
  adapter returns once the server shows it loaded.
* unload: refused if requests arrived since the API accepted it; then unload.
* migrate: load on the destination, wait until Nexus routes the model there (healthy, and
  listing it), wait for the origin's requests to finish (``drain_timeout_seconds``), then
  unload from the origin. A step that fails leaves the model where it is: loaded on both
  rather than on neither.

No step touches a backend's status: a backend loading a model keeps serving the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from nexus.config import FleetConfig
from nexus.fleet.errors import OperationFailed
from nexus.fleet.http import BackendHTTP
from nexus.fleet.lifecycle import Lifecycle
from nexus.fleet.operations import Operation
from nexus.registry import Backend, Registry

WATCH_SECONDS = 0.1  # how often a migration looks at the registry and the in-flight count


def in_flight(backend: Backend, model: str) -> int:
    """Requests ``backend`` is serving for ``model`` right now."""
    return backend.serving.get(model, 0)


@asynccontextmanager
async def step(op: Operation, what: str, seconds: float | None) -> AsyncIterator[None]:
    """Marks ``what`` as the operation's step; OperationFailed after ``seconds``."""
    op.step = what
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise OperationFailed(f"{what}: not done after {seconds:g} s") from None


class Runner:
    def __init__(
        self,
        config: FleetConfig,
        registry: Registry,
        http: BackendHTTP,
        adapters: dict[str, Lifecycle],
        hot: Callable[[str, str], bool],
        changed: Callable[[Backend], None],
    ) -> None:
        self.config = config
        self.registry = registry
        self.http = http
        self.adapters = adapters
        self.hot = hot  # (backend name, model): answered within the hot window
        self.changed = changed  # a backend's models may differ now: probe it soon

    async def load(self, op: Operation) -> None:
        backend = self._backend(op.backend)
        adapter = self._adapter(backend)
        if op.pulling:
            try:
                if op.model not in backend.models:
                    async with step(op, f"pulling {op.model} on {backend.name}", None):
                        await adapter.pull(self.http, backend, op.model, op.report)
                    self.changed(backend)
            finally:
                op.pulling = False  # done with pulling: another pull may take its place
        if op.evict:
            self._check_cold(backend, op.evict)
            for model in op.evict:
                await self._unload(op, backend, model)
        async with step(op, f"loading on {backend.name}", self.config.operation_timeout_seconds):
            await adapter.load(self.http, backend, op.model)
        self.changed(backend)

    async def unload(self, op: Operation) -> None:
        await self._unload(op, self._backend(op.backend), op.model)

    async def migrate(self, op: Operation) -> None:
        source, target = self._backend(op.source), self._backend(op.backend)
        seconds = self.config.operation_timeout_seconds
        async with step(op, f"loading on {target.name}", seconds):
            await self._adapter(target).load(self.http, target, op.model)
        self.changed(target)
        async with step(op, f"waiting for Nexus to route {op.model} to {target.name}", seconds):
            await _watch(lambda: target.routable and op.model in target.models)
        drain = self.config.drain_timeout_seconds
        try:
            async with step(op, f"waiting for requests on {source.name} to finish", drain):
                await _watch(lambda: in_flight(source, op.model) == 0)
        except OperationFailed:
            raise OperationFailed(
                f"{source.name} was still serving requests after {drain:g} s: {op.model} is "
                f"loaded on {target.name} and left loaded on {source.name}"
            ) from None
        await self._unload(op, source, op.model)

    async def _unload(self, op: Operation, backend: Backend, model: str) -> None:
        busy = in_flight(backend, model)
        if busy:
            raise OperationFailed(
                f"{backend.name} is serving {busy} request(s) now: {model} not unloaded "
                "(an unload never cuts a request)"
            )
        async with step(
            op, f"unloading {model} from {backend.name}", self.config.operation_timeout_seconds
        ):
            await self._adapter(backend).unload(self.http, backend, model)
        self.changed(backend)

    def _check_cold(self, backend: Backend, models: tuple[str, ...]) -> None:
        """Before unloading anything to make room: every model to unload is still idle."""
        hot = [m for m in models if self.hot(backend.name, m)]
        if hot:
            raise OperationFailed(
                f"{', '.join(hot)} answered requests on {backend.name} since the "
                "recommendation: nothing unloaded (a hot model is never unloaded for a prediction)"
            )

    def _backend(self, name: str) -> Backend:
        backend = self.registry.find(name)
        if backend is None:
            raise OperationFailed(f"backend {name} was removed")
        return backend

    def _adapter(self, backend: Backend) -> Lifecycle:
        adapter = self.adapters.get(backend.type)
        if adapter is None:
            raise OperationFailed(f"backend {backend.name} is now of type {backend.type}")
        return adapter


async def _watch(done: Callable[[], bool]) -> None:
    # In-process state with no event to wait on; a few looks a second cost nothing.
    while not done():  # noqa: ASYNC110
        await asyncio.sleep(WATCH_SECONDS)
