"""A probe tells the registry's listeners (the queue, which then offers every waiter the room
there is) only when it found something new: most probes of a steady backend find nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.registry import Backend, BackendStatus
from tests.fakes import FakeLlamaCpp, FakeModel
from tests.helpers import backend_entry, running_nexus


async def test_a_probe_that_finds_the_backend_as_it_was_wakes_no_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeLlamaCpp([FakeModel("smol", context_length=4096)]) as fake:
        backends = [backend_entry(fake, "box", "llamacpp")]
        async with running_nexus(tmp_path, backends, queuing={"enabled": True}) as nexus:
            state = nexus.state
            queue = state.queue
            assert queue is not None
            (backend,) = state.registry
            assert backend.status is BackendStatus.HEALTHY and backend.reported_slots == 1
            told: list[Backend] = []
            state.registry.on_change.append(told.append)
            dispatches: list[Backend | None] = []
            real_dispatch = queue.dispatch

            def dispatch(freed: Backend | None = None) -> None:
                dispatches.append(freed)
                real_dispatch(freed)

            monkeypatch.setattr(queue, "dispatch", dispatch)
            generation = state.registry.generation

            async def probe() -> None:
                checked = backend.last_health_check
                await state.health.check(backend)  # what the health loop does every interval
                assert backend.last_health_check != checked  # (the probe was applied)

            for _ in range(3):
                await probe()
            assert told == [] and dispatches == []
            assert list(backend.models) == ["smol"] and backend.status is BackendStatus.HEALTHY

            # A capability of its model changed: the queue looks again, routing's index stays.
            fake.model.vision = True
            await probe()
            assert backend.models["smol"].supports_vision is True
            assert told == [backend] and dispatches == [None]
            assert state.registry.generation == generation
            await probe()
            assert told == [backend] and dispatches == [None]

            # Another model: both.
            fake.models[0] = FakeModel("other", context_length=4096)
            await probe()
            assert list(backend.models) == ["other"]
            assert told == [backend, backend] and dispatches == [None, None]
            assert state.registry.generation != generation
