"""The fleet on Ollama (nexus.fleet.ollama and the Fleet's keys for Ollama models), against
FakeOllama over real HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nexus.config import FleetConfig
from nexus.fleet.errors import Conflict
from nexus.fleet.operations import Operation
from nexus.fleet.service import Fleet
from nexus.registry import Backend, BackendStatus, Model, Registry
from nexus.transport import Pool
from tests.fakes import FakeModel, FakeOllama
from tests.fakes.ollama import GiB, Resident
from tests.helpers import wait_until


class SizelessOllama(FakeOllama):
    """An Ollama whose /api/ps tells which models are loaded but not their sizes."""

    def _ps_entry(self, res: Resident, now: float) -> dict[str, Any]:
        entry = super()._ps_entry(res, now)
        del entry["size"], entry["size_vram"]
        return entry


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    return time.mktime((year, month, day, hour, minute, 0, 0, 0, -1))


MONDAY_1000 = local(2025, 6, 9, 10)


def fleet_for(url: str, models: list[str], **settings: Any) -> tuple[Fleet, Pool]:
    registry = Registry()
    backend = registry.add_backend(Backend(name="box", url=url, type="ollama"))
    registry.update_models(backend.id, [Model(id=m) for m in models])
    pool = Pool(2, 5)
    return Fleet(FleetConfig(**settings), registry, pool, clock=lambda: MONDAY_1000), pool


async def finished(op: Operation) -> Operation:
    await wait_until(lambda: op.done, timeout=10, what=op.describe())
    return op


async def test_a_loaded_model_without_a_size_still_counts_as_loaded() -> None:
    async with SizelessOllama([FakeModel("llama3:8b"), FakeModel("phi3:mini")]) as box:
        fleet, pool = fleet_for(box.url, ["llama3:8b", "phi3:mini"], enabled=True)
        try:
            op = await finished(await fleet.load("box", "llama3:8b"))
            assert op.state == "succeeded", op.reason
            backend = fleet.registry.find("box")
            assert backend is not None
            residency = await fleet.adapters["ollama"].residency(fleet.http, backend)
            assert residency.loaded == {"llama3:8b": None}  # loaded, size unsaid
            assert set(residency.sizes) == {"llama3:8b", "phi3:mini"}  # /api/tags has them
            # Demand for llama3:8b now: it is loaded, so nothing is recommended; and a box
            # whose loaded sizes are unknown has no known free memory to recommend into.
            fleet.registry.update_status(backend.id, BackendStatus.HEALTHY)
            fleet.vram_gb["box"] = 24
            for day in (2, 3, 4, 5, 6):  # the past weekdays, 10:00-10:59
                for minute in range(20):
                    fleet.record("llama3:8b", local(2025, 6, day, 10, minute))
            assert await fleet.analyze() == []
            assert fleet.status()["backends"] == []
            op = await finished(await fleet.unload("box", "llama3:8b"))
            assert op.state == "succeeded", op.reason
            assert box.loaded() == []
        finally:
            pool.close()


@pytest.mark.parametrize(
    ("first", "second"), [("mistral", "mistral:latest"), ("mistral:latest", "mistral")]
)
async def test_a_name_without_a_tag_and_the_same_with_latest_are_one_model(
    first: str, second: str
) -> None:
    async with FakeOllama([FakeModel("phi3:mini")], pullable={"mistral:latest": GiB}) as box:
        box.pull_seconds = 0.5
        fleet, pool = fleet_for(box.url, ["phi3:mini"])
        try:
            op = await fleet.load("box", first, pull=True)
            assert op.model == "mistral:latest"
            with pytest.raises(Conflict, match=op.id):
                await fleet.load("box", second, pull=True)
            assert (await finished(op)).state == "succeeded", op.reason
            assert box.loaded() == ["mistral:latest"]
            pulls = [r.json for r in box.requests if r.path == "/api/pull"]
            assert pulls == [{"model": "mistral:latest", "stream": True}]  # one pull only
        finally:
            pool.close()
