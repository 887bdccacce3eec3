"""Model lifecycle (F20) and fleet recommendations (F19) against FakeOllama over real HTTP.

Nexus runs in process exactly as ``nexus serve`` builds it (``running_nexus``); the fleet is
wired onto it here as the app will wire it (routes on the app's router, the record sink,
the probe transport, ``health.check_soon``). The CLI runs in a thread against the server's
URL, as a user's ``nexus`` would. Time for recommendations comes from a manual clock: no
test waits for an hour to pass.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import click
import orjson
import pytest
from click.testing import CliRunner, Result

from nexus.api import fleet as fleet_api
from nexus.cli.admin import models
from nexus.cli.fleet import fleet as fleet_cli
from nexus.cli.fleet import operations as operations_cli
from nexus.config import FleetConfig
from nexus.fleet.demand import MemoryStore
from nexus.fleet.service import Fleet
from nexus.registry import BackendStatus
from tests.fakes import Behavior, FakeModel, FakeOllama, FakeVLLM
from tests.fakes.ollama import GiB, ManualClock
from tests.helpers import Nexus, backend_entry, running_nexus, wait_until

OLLAMA_MODELS = [FakeModel("llama3:8b"), FakeModel("qwen2.5:14b"), FakeModel("phi3:mini")]
SIZES = {"llama3:8b": 5 * GiB, "qwen2.5:14b": 9 * GiB, "phi3:mini": 3 * GiB}


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    """A local wall-clock time as Unix seconds (demand hours are local)."""
    return time.mktime((year, month, day, hour, minute, 0, 0, 0, -1))


# 2025-06-09 is a Monday: the week before holds five past weekdays.
MONDAY_0830 = local(2025, 6, 9, 8, 30)
PAST_WEEKDAYS = [(2025, 6, d) for d in (2, 3, 4, 5, 6)]


@asynccontextmanager
async def running_fleet(
    tmp_path: Path,
    backends: list[dict[str, Any]],
    *,
    vram_gb: dict[str, float] | None = None,
    clock: ManualClock | None = None,
    store: MemoryStore | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Nexus, Fleet]]:
    async with running_nexus(tmp_path, backends) as nexus:
        state = nexus.state
        # The one nexus serve built is replaced by one with the test's clock, store, memory.
        assert state.fleet is not None
        await state.fleet.stop()
        if state.fleet.observe in state.recorder.sinks:  # (only while the fleet is on)
            state.recorder.sinks.remove(state.fleet.observe)
        fleet = Fleet(
            FleetConfig(**settings),
            state.registry,
            state.health.client.transport,
            vram_gb=vram_gb,
            store=store,
            clock=clock or time.time,
            changed=state.health.check_soon,
        )
        fleet_api.add_routes(nexus.server.app.router, fleet, nexus.server.app.dashboard.sites)
        nexus.server.app.dashboard.hub.fleet = fleet
        state.recorder.sinks.append(fleet.observe)
        state.fleet = fleet
        await fleet.start()
        try:
            yield nexus, fleet
        finally:
            await fleet.stop()


async def nexus_cli(nexus: Nexus, *args: str) -> Result:
    """The fleet's commands as ``nexus`` has them, run in a thread against the server."""
    group = click.Group(
        commands={"models": models, "operations": operations_cli, "fleet": fleet_cli}
    )
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, group, [*args, "--url", nexus.url])


async def finished(nexus: Nexus, op_id: str, timeout: float = 10.0) -> dict[str, Any]:
    async def done() -> Any:
        status, op, _ = await nexus.get(f"/admin/operations/{op_id}")
        assert status == 200, op
        return op if op["state"] in ("succeeded", "failed") else None

    result: dict[str, Any] = await wait_until(done, timeout=timeout, what=f"operation {op_id}")
    return result


# ------------------------------------------------------------------ lifecycle, via the CLI


async def test_load_unload_migrate_through_the_cli(tmp_path: Path) -> None:
    async with (
        FakeOllama(OLLAMA_MODELS, model_sizes=SIZES) as box_a,
        FakeOllama(OLLAMA_MODELS, model_sizes=SIZES) as box_b,
    ):
        backends = [
            backend_entry(box_a, "box-a", "ollama"),
            backend_entry(box_b, "box-b", "ollama"),
        ]
        async with running_fleet(tmp_path, backends, keep_alive="30m") as (nexus, _):
            loaded = await nexus_cli(
                nexus, "models", "load", "qwen2.5:14b", "--backend", "box-a", "--wait"
            )
            assert loaded.exit_code == 0, loaded.output
            assert "succeeded" in loaded.output
            assert box_a.loaded() == ["qwen2.5:14b"] and box_b.loaded() == []
            warmup = [r.json for r in box_a.requests if r.path == "/api/generate"]
            assert warmup == [{"model": "qwen2.5:14b", "keep_alive": "30m", "stream": False}]

            moved = await nexus_cli(
                nexus,
                "models",
                "migrate",
                "qwen2.5:14b",
                "--from",
                "box-a",
                "--to",
                "box-b",
                "--wait",
            )
            assert moved.exit_code == 0, moved.output
            assert box_a.loaded() == [] and box_b.loaded() == ["qwen2.5:14b"]

            unloaded = await nexus_cli(
                nexus, "models", "unload", "qwen2.5:14b", "--backend", "box-b", "--wait"
            )
            assert unloaded.exit_code == 0, unloaded.output
            assert box_b.loaded() == []
            unload_calls = [r.json for r in box_b.requests if r.path == "/api/generate"]
            assert unload_calls[-1] == {"model": "qwen2.5:14b", "keep_alive": 0, "stream": False}

            listing = await nexus_cli(nexus, "operations", "--json")
            assert listing.exit_code == 0, listing.output
            ops = orjson.loads(listing.stdout)
            assert [(o["kind"], o["state"]) for o in ops] == [
                ("unload", "succeeded"),
                ("migrate", "succeeded"),
                ("load", "succeeded"),
            ]
            assert all(o["started_at"] <= o["finished_at"] for o in ops)
            assert ops[1]["source"] == "box-a" and ops[1]["backend"] == "box-b"
            table = await nexus_cli(nexus, "operations")
            assert (
                table.exit_code == 0 and "migrate qwen2.5:14b from box-a to box-b" in table.stdout
            )


async def test_pull_streams_progress_into_the_operation_then_loads(tmp_path: Path) -> None:
    async with FakeOllama(
        OLLAMA_MODELS, model_sizes=SIZES, pullable={"mistral:7b": 4 * GiB}
    ) as box:
        box.pull_seconds = 0.3
        async with running_fleet(tmp_path, [backend_entry(box, "box", "ollama")]) as (nexus, fleet):
            missing = await nexus_cli(nexus, "models", "load", "mistral:7b", "--backend", "box")
            assert missing.exit_code != 0 and "--pull" in missing.output  # 404 names the way out
            seen: list[dict[str, Any]] = []
            status, body, _ = await nexus.post(
                "/admin/models/load", {"model": "mistral:7b", "backend": "box", "pull": True}
            )
            assert status == 202, body
            op = fleet.operation(body["operation"]["id"])
            assert op is not None

            def progress() -> bool:
                if op.progress and op.progress not in seen:
                    seen.append(dict(op.progress))
                return op.done

            await wait_until(progress, timeout=10, interval=0.005, what="pull and load")
            assert op.state == "succeeded", op.reason
            assert any(p["total"] == 4 * GiB and 0 < p["completed"] < 4 * GiB for p in seen)
            assert op.progress == {"status": "success", "completed": None, "total": None}
            assert box.loaded() == ["mistral:7b"]
            # Nexus was told the box changed: it lists the pulled model without waiting 30 s.
            await wait_until(lambda: nexus.state.registry.has_model("mistral:7b"), what="re-probe")
            # The CLI's --pull: the same, from the command line, waiting for the end.
            box.pullable["llava:7b"] = 5 * GiB
            pulled = await nexus_cli(
                nexus, "models", "load", "llava:7b", "--backend", "box", "--pull", "--wait"
            )
            assert pulled.exit_code == 0, pulled.output
            assert "succeeded" in pulled.output
            assert sorted(box.loaded()) == ["llava:7b", "mistral:7b"]


async def test_pull_of_an_unknown_model_fails_with_ollamas_reason(tmp_path: Path) -> None:
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES) as box:
        async with running_fleet(tmp_path, [backend_entry(box, "box", "ollama")]) as (nexus, _):
            status, body, _ = await nexus.post(
                "/admin/models/load", {"model": "nope:1b", "backend": "box", "pull": True}
            )
            assert status == 202
            op = await finished(nexus, body["operation"]["id"])
            assert op["state"] == "failed"
            assert "pull model manifest: file does not exist" in op["reason"]
            assert box.loaded() == []


async def test_pulls_at_once_are_bounded_per_backend_and_in_all(tmp_path: Path) -> None:
    pullable = {"mistral:7b": 4 * GiB, "llava:7b": 5 * GiB}
    async with (
        FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, pullable=pullable) as box_a,
        FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, pullable=pullable, load_seconds=30) as box_b,
        FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, pullable=pullable) as box_c,
    ):
        box_a.pull_seconds = 60  # runs until the test ends
        backends = [
            backend_entry(box_a, "box-a", "ollama"),
            backend_entry(box_b, "box-b", "ollama"),
            backend_entry(box_c, "box-c", "ollama"),
        ]
        async with running_fleet(tmp_path, backends) as (nexus, fleet):
            fleet.max_pulls_per_backend, fleet.max_pulls = 1, 2

            async def pull(model: str, backend: str) -> tuple[int, Any]:
                body = {"model": model, "backend": backend, "pull": True}
                status, answer, _ = await nexus.post("/admin/models/load", body)
                return status, answer

            status, first = await pull("mistral:7b", "box-a")
            assert status == 202, first
            first_id = first["operation"]["id"]
            status, busy = await pull("llava:7b", "box-a")
            assert status == 409, busy
            assert busy["error"]["code"] == "conflict" and first_id in busy["error"]["message"]
            assert busy["error"]["context"] == {"pulling": [first_id], "limit": 1}
            # A pull that ends frees its place: here one that fails...
            status, ghost = await pull("nope:1b", "box-b")
            assert status == 202, ghost
            assert (await finished(nexus, ghost["operation"]["id"]))["state"] == "failed"
            # ...and one that ended while its operation goes on loading the model.
            status, loading = await pull("mistral:7b", "box-b")
            assert status == 202, loading
            await wait_until(lambda: box_b.loading() == ["mistral:7b"], what="loading on b")
            box_b.pull_seconds = 60
            status, second = await pull("llava:7b", "box-b")
            assert status == 202, second
            # Two pulls run: a third, on a backend that pulls nothing, waits for one to end.
            status, over = await pull("mistral:7b", "box-c")
            assert status == 409, over
            second_id = second["operation"]["id"]
            assert over["error"]["context"] == {"pulling": [first_id, second_id], "limit": 2}
            assert "in all" in over["error"]["message"]
            assert [r.path for r in box_c.requests if r.path == "/api/pull"] == []
            box_b.finish_loading()


async def test_a_model_that_does_not_fit_fails_with_the_reason(tmp_path: Path) -> None:
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, vram_bytes=8 * GiB) as box:
        async with running_fleet(tmp_path, [backend_entry(box, "box", "ollama")]) as (nexus, _):
            status, body, _ = await nexus.post(
                "/admin/models/load", {"model": "qwen2.5:14b", "backend": "box"}
            )
            assert status == 202
            op = await finished(nexus, body["operation"]["id"])
            assert op["state"] == "failed" and "more system memory" in op["reason"], op
            assert box.loaded() == []


async def test_the_backend_keeps_serving_while_a_model_loads(tmp_path: Path) -> None:
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, load_seconds=30) as box:
        box.preload("llama3:8b")
        async with running_fleet(tmp_path, [backend_entry(box, "box", "ollama")]) as (nexus, fleet):
            status, body, _ = await nexus.post(
                "/admin/models/load", {"model": "qwen2.5:14b", "backend": "box"}
            )
            assert status == 202
            await wait_until(lambda: box.loading() == ["qwen2.5:14b"], what="qwen loading")
            reply = await nexus.client.chat.completions.create(
                model="llama3:8b", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
            op = fleet.operation(body["operation"]["id"])
            assert op is not None and op.state == "running" and op.step == "loading on box"
            backend = nexus.state.registry.find("box")
            assert backend is not None and backend.status is BackendStatus.HEALTHY
            assert "qwen2.5:14b" in nexus.state.registry.healthy_model_ids()
            # A second action on the loading model is refused while the first runs.
            status, again, _ = await nexus.post(
                "/admin/models/unload", {"model": "qwen2.5:14b", "backend": "box"}
            )
            assert status == 409 and op.id in again["error"]["message"]
            box.finish_loading()
            done = await finished(nexus, op.id)
            assert done["state"] == "succeeded"
            assert box.loaded() == ["llama3:8b", "qwen2.5:14b"]


async def test_unloading_a_busy_model_is_refused_then_allowed(tmp_path: Path) -> None:
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES) as box:
        box.preload("llama3:8b")
        async with running_fleet(tmp_path, [backend_entry(box, "box", "ollama")]) as (nexus, _):
            box.gate = asyncio.Event()
            request = asyncio.create_task(
                nexus.client.chat.completions.create(
                    model="llama3:8b", messages=[{"role": "user", "content": "hold on"}]
                )
            )
            await wait_until(lambda: box.active_requests == 1, what="request in flight")
            status, body, _ = await nexus.post(
                "/admin/models/unload", {"model": "llama3:8b", "backend": "box"}
            )
            assert status == 409, body
            assert body["error"]["code"] == "conflict" and body["error"]["context"] == {
                "in_flight": 1
            }
            assert box.loaded() == ["llama3:8b"]
            box.gate.set()
            reply = await request
            assert reply.choices[0].message.content  # never cut
            await wait_until(lambda: nexus.pending()["box"] == 0, what="request done")
            status, body, _ = await nexus.post(
                "/admin/models/unload",
                {"model": "llama3:8b", "backend": "box"},
            )
            assert status == 202, body
            op = await finished(nexus, body["operation"]["id"])
            assert op["state"] == "succeeded" and op["model"] == "llama3:8b"
            assert box.loaded() == []


async def test_refusals_404_501_and_the_admin_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        FakeOllama(OLLAMA_MODELS, model_sizes=SIZES) as box,
        FakeVLLM([FakeModel("qwen2.5:14b")]) as vllm,
    ):
        backends = [backend_entry(box, "box", "ollama"), backend_entry(vllm, "gpu", "vllm")]
        async with running_fleet(tmp_path, backends) as (nexus, _):
            status, body, _ = await nexus.post(
                "/admin/models/load", {"model": "qwen2.5:14b", "backend": "gpu"}
            )
            assert status == 501 and "vllm" in body["error"]["message"], body
            status, body, _ = await nexus.post(
                "/admin/models/load", {"model": "x", "backend": "nowhere"}
            )
            assert status == 404
            status, body, _ = await nexus.post(
                "/admin/models/unload", {"model": "made-up", "backend": "box"}
            )
            assert status == 404
            status, body, _ = await nexus.post(
                "/admin/models/migrate", {"model": "qwen2.5:14b", "from": "box", "to": "gpu"}
            )
            assert status == 501
            status, body, _ = await nexus.post("/admin/models/load", {"model": 7, "backend": "box"})
            assert status == 400 and body["error"]["param"] == "model"
            status, body, _ = await nexus.post(
                "/admin/models/load",
                data=b'{"model": "llama3:8b", "backend": "box"}',
                headers={"Content-Type": "text/plain"},
            )
            assert status == 415  # what a cross-site form could send
            monkeypatch.setenv("NEXUS_ADMIN_TOKEN", "s3cret")
            status, body, _ = await nexus.post(
                "/admin/models/load", {"model": "llama3:8b", "backend": "box"}
            )
            assert status == 403
            status, body, _ = await nexus.get("/admin/operations")
            assert status == 403
            assert box.loaded() == []
            status, body, _ = await nexus.post(
                "/admin/models/load",
                {"model": "llama3:8b", "backend": "box"},
                headers={"Authorization": "Bearer s3cret"},
            )
            assert status == 202


async def hold_a_request_on(
    nexus: Nexus, box: FakeOllama, model: str = "llama3:8b"
) -> asyncio.Task[Any]:
    """A request for ``model`` held in flight on ``box`` (its gate closed)."""
    box.gate = asyncio.Event()
    request = asyncio.create_task(
        nexus.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hold on"}]
        )
    )
    await wait_until(lambda: box.active_requests == 1, what=f"a {model} request in flight")
    return request


def unloads(box: FakeOllama) -> list[Any]:
    return [
        r.json for r in box.requests if r.path == "/api/generate" and r.json.get("keep_alive") == 0
    ]


@asynccontextmanager
async def two_boxes(
    tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[Nexus, Fleet, FakeOllama, FakeOllama]]:
    """llama3:8b loaded on box-a (preferred), both boxes able to load it."""
    async with (
        FakeOllama(OLLAMA_MODELS, model_sizes=SIZES) as box_a,
        FakeOllama(OLLAMA_MODELS, model_sizes=SIZES) as box_b,
    ):
        box_a.preload("llama3:8b")
        backends = [
            backend_entry(box_a, "box-a", "ollama", priority=1),
            backend_entry(box_b, "box-b", "ollama", priority=50),
        ]
        async with running_fleet(tmp_path, backends, **settings) as (nexus, fleet):
            yield nexus, fleet, box_a, box_b


async def migrate_llama(nexus: Nexus, fleet: Fleet) -> Any:
    status, body, _ = await nexus.post(
        "/admin/models/migrate", {"model": "llama3:8b", "from": "box-a", "to": "box-b"}
    )
    assert status == 202, body
    op = fleet.operation(body["operation"]["id"])
    assert op is not None
    return op


async def test_a_migration_drains_the_origin_before_unloading_it(tmp_path: Path) -> None:
    async with two_boxes(tmp_path, drain_timeout_seconds=30) as (nexus, fleet, box_a, box_b):
        request = await hold_a_request_on(nexus, box_a)
        op = await migrate_llama(nexus, fleet)
        await wait_until(
            lambda: op.step == "waiting for requests on box-a to finish",
            timeout=10,
            what="the migration waiting for box-a's request",
        )
        assert box_b.loaded() == ["llama3:8b"]  # loaded on the destination already...
        assert box_a.loaded() == ["llama3:8b"] and unloads(box_a) == []  # ...not unloaded yet
        assert op.state == "running"
        box_a.gate.set()
        reply = await request
        assert reply.choices[0].message.content  # the in-flight request completed, uncut
        done = await finished(nexus, op.id)
        assert done["state"] == "succeeded", done
        assert box_a.loaded() == [] and box_b.loaded() == ["llama3:8b"]
        assert unloads(box_a) == [{"model": "llama3:8b", "keep_alive": 0, "stream": False}]


async def test_a_drain_that_times_out_leaves_the_model_loaded_on_both(tmp_path: Path) -> None:
    async with two_boxes(tmp_path, drain_timeout_seconds=0.5) as (nexus, fleet, box_a, box_b):
        request = await hold_a_request_on(nexus, box_a)
        op = await migrate_llama(nexus, fleet)
        done = await finished(nexus, op.id)
        assert done["state"] == "failed"
        assert done["reason"] == (
            "box-a was still serving requests after 0.5 s: llama3:8b is loaded on box-b and "
            "left loaded on box-a"
        )
        assert box_a.loaded() == ["llama3:8b"] and box_b.loaded() == ["llama3:8b"]
        assert unloads(box_a) == []
        box_a.gate.set()
        assert (await request).choices[0].message.content  # never cut


async def test_a_load_that_takes_too_long_fails_with_the_reason(tmp_path: Path) -> None:
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, load_seconds=30) as box:
        backends = [backend_entry(box, "box", "ollama")]
        async with running_fleet(tmp_path, backends, operation_timeout_seconds=1) as (nexus, _):
            status, body, _ = await nexus.post(
                "/admin/models/load", {"model": "qwen2.5:14b", "backend": "box"}
            )
            assert status == 202, body
            op = await finished(nexus, body["operation"]["id"])
            assert op["state"] == "failed"
            assert op["reason"] == "loading on box: not done after 1 s"
            box.finish_loading()


async def test_a_pull_that_stalls_fails_with_the_reason(tmp_path: Path) -> None:
    async with FakeOllama(
        OLLAMA_MODELS, model_sizes=SIZES, pullable={"mistral:7b": 4 * GiB}
    ) as box:
        box.pull_behavior, box.cut_after = Behavior.STALL_STREAM, 2  # two lines, then nothing
        backends = [backend_entry(box, "box", "ollama")]
        async with running_fleet(tmp_path, backends, pull_stall_seconds=1) as (nexus, _):
            status, body, _ = await nexus.post(
                "/admin/models/load", {"model": "mistral:7b", "backend": "box", "pull": True}
            )
            assert status == 202, body
            op = await finished(nexus, body["operation"]["id"])
            assert op["state"] == "failed"
            assert "sent nothing for 1 s" in op["reason"], op
            assert op["reason"].startswith("box: ")
            assert box.loaded() == []


# ------------------------------------------------------------------ recommendations


def weekday_demand(fleet: Fleet, model: str, per_hour: int, hours: range) -> None:
    for year, month, day in PAST_WEEKDAYS:
        for hour in hours:
            for i in range(per_hour):
                fleet.record(model, local(year, month, day, hour, i * 59 // per_hour))


@asynccontextmanager
async def qwen_wanted_on_a_full_box(
    tmp_path: Path, clock: ManualClock
) -> AsyncIterator[tuple[Nexus, Fleet, FakeOllama]]:
    """Weekday demand for qwen2.5:14b (9 GiB) at 09:00-12:00, and one 16 GiB box holding
    llama3:8b (5) and phi3:mini (3): 16 less 20 % headroom is 12.8, so 4.8 free."""
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, vram_bytes=16 * GiB) as box:
        box.preload("llama3:8b")
        box.preload("phi3:mini")
        async with running_fleet(
            tmp_path,
            [backend_entry(box, "box", "ollama")],
            vram_gb={"box": 16},
            clock=clock,
            enabled=True,
            min_requests=20,
        ) as (nexus, fleet):
            weekday_demand(fleet, "qwen2.5:14b", 30, range(9, 12))
            yield nexus, fleet, box


async def test_a_recommendation_from_demand_keeps_headroom_and_hot_models(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(MONDAY_0830)
    async with qwen_wanted_on_a_full_box(tmp_path, clock) as (nexus, fleet, box):
        fleet.record("made-up-model", clock())  # clients' inventions are not counted
        assert "made-up-model" not in fleet.demand.counts
        # qwen fits only if llama3 goes (phi3 alone frees too little). llama3 answered a
        # minute ago: hot, so nothing is offered.
        fleet.record("llama3:8b", clock() - 60, "box")
        assert await fleet.analyze() == []
        status, body, _ = await nexus.get("/admin/fleet/recommendations")
        assert status == 200 and body["recommendations"] == []
        assert body["backends"] == [
            {
                "backend": "box",
                "vram_gb": 16.0,
                "used_gb": 8.0,
                "free_gb": 4.8,
                "loaded": ["llama3:8b", "phi3:mini"],
                "hot": ["llama3:8b"],
            }
        ]
        # Five minutes later llama3 is idle: unloading it makes room.
        clock.advance(301)
        caplog.set_level(logging.INFO, logger="nexus.fleet")
        (rec,) = await fleet.analyze()
        assert (rec.model, rec.backend) == ("qwen2.5:14b", "box")
        assert rec.evict == ("llama3:8b",)
        assert rec.confidence == round(5 / 6, 2) and rec.per_hour == 30
        assert "on weekdays 09:00-12:00" in rec.reason and "seen on 5 of 5" in rec.reason
        assert rec.expires_at == clock() + fleet.config.analysis_interval_seconds
        assert [r.getMessage() for r in caplog.records if rec.id in r.getMessage()]
        # Seen again: the same recommendation (same id), not logged twice.
        caplog.clear()
        assert [r.id for r in await fleet.analyze()] == [rec.id]
        assert not [r for r in caplog.records if "new recommendation" in r.getMessage()]

        shown = await nexus_cli(nexus, "fleet")
        assert shown.exit_code == 0 and rec.id in shown.stdout, shown.output
        applied = await nexus_cli(nexus, "fleet", "apply", rec.id, "--wait")
        assert applied.exit_code == 0, applied.output
        assert box.loaded() == ["phi3:mini", "qwen2.5:14b"]
        status, body, _ = await nexus.post(f"/admin/fleet/apply/{rec.id}", {})
        assert status == 409  # applied already
        # Once the clock passes the expiry the recommendation is gone.
        clock.advance(fleet.config.analysis_interval_seconds + 1)
        status, body, _ = await nexus.post(f"/admin/fleet/apply/{rec.id}", {})
        assert status == 404


async def test_a_request_in_flight_keeps_its_own_model_not_the_whole_backend(
    tmp_path: Path,
) -> None:
    async with qwen_wanted_on_a_full_box(tmp_path, ManualClock(MONDAY_0830)) as (
        nexus,
        fleet,
        box,
    ):
        request = await hold_a_request_on(nexus, box, "phi3:mini")
        # The box serves phi3 now: phi3 stays, but idle llama3 may make room for qwen.
        (rec,) = await fleet.analyze()
        assert (rec.model, rec.evict) == ("qwen2.5:14b", ("llama3:8b",))
        assert fleet.status()["backends"][0]["hot"] == ["phi3:mini"]
        box.gate.set()
        assert (await request).choices[0].message.content


async def test_headroom_is_never_used(tmp_path: Path) -> None:
    clock = ManualClock(MONDAY_0830)
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, vram_bytes=24 * GiB) as box:
        async with running_fleet(
            tmp_path,
            [backend_entry(box, "box", "ollama")],
            vram_gb={"box": 10},
            clock=clock,
            enabled=True,
            min_requests=20,
        ) as (_, fleet):
            weekday_demand(fleet, "qwen2.5:14b", 30, range(9, 10))
            # 9 GiB fits in 10 GiB, but not in the 8 GiB that 20 % headroom leaves.
            assert await fleet.analyze() == []
            fleet.config = FleetConfig(enabled=True, min_requests=20, headroom_percent=5)
            (rec,) = await fleet.analyze()
            assert rec.evict == () and "needs 9.0 GB of 9.5 GB free" in rec.reason


async def test_applying_a_recommendation_whose_model_turned_hot_unloads_nothing(
    tmp_path: Path,
) -> None:
    # Real traffic makes llama3 hot here, and request records carry the real time: so this
    # test's clock starts now and its history is the same hours on past days of today's kind.
    clock = ManualClock(time.time())
    today = datetime.fromtimestamp(clock())
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, vram_bytes=16 * GiB) as box:
        box.preload("llama3:8b")
        box.preload("phi3:mini")
        async with running_fleet(
            tmp_path,
            [backend_entry(box, "box", "ollama")],
            vram_gb={"box": 16},
            clock=clock,
            enabled=True,
            min_requests=20,
        ) as (nexus, fleet):
            for back in range(1, 15):
                day = today - timedelta(days=back)
                if (day.weekday() >= 5) == (today.weekday() >= 5):
                    start = day.replace(minute=0, second=0, microsecond=0)
                    for i in range(60):  # this hour and the next: 30 requests each
                        fleet.record("qwen2.5:14b", (start + timedelta(minutes=2 * i)).timestamp())
            (rec,) = await fleet.analyze()
            assert rec.evict == ("llama3:8b",)
            reply = await nexus.client.chat.completions.create(
                model="llama3:8b", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
            await wait_until(lambda: fleet.hot("box", "llama3:8b"), what="llama3 hot")
            status, body, _ = await nexus.post(f"/admin/fleet/apply/{rec.id}", {})
            assert status == 202
            op = await finished(nexus, body["operation"]["id"])
            assert op["state"] == "failed" and "llama3:8b answered requests" in op["reason"]
            assert box.loaded() == ["llama3:8b", "phi3:mini"]


async def test_demand_history_survives_a_restart_through_the_store(tmp_path: Path) -> None:
    clock = ManualClock(MONDAY_0830)
    store = MemoryStore()
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, vram_bytes=24 * GiB) as box:
        backends = [backend_entry(box, "box", "ollama")]
        settings: dict[str, Any] = {"enabled": True, "min_requests": 20}
        async with running_fleet(
            tmp_path, backends, vram_gb={"box": 24}, clock=clock, store=store, **settings
        ) as (_, fleet):
            weekday_demand(fleet, "qwen2.5:14b", 30, range(9, 11))
            (before,) = await fleet.analyze()
        # The store holds plain JSON: what a SQLite or Redis store keeps as text.
        assert store.snapshot is not None
        store.snapshot = orjson.loads(orjson.dumps(store.snapshot))
        async with running_fleet(
            tmp_path, backends, vram_gb={"box": 24}, clock=clock, store=store, **settings
        ) as (_, restarted):
            assert restarted.demand.counts == fleet.demand.counts
            (after,) = await restarted.analyze()
            assert (after.model, after.backend, after.reason) == (
                before.model,
                before.backend,
                before.reason,
            )


async def test_auto_apply_loads_the_recommended_model(tmp_path: Path) -> None:
    clock = ManualClock(MONDAY_0830)
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, vram_bytes=24 * GiB) as box:
        async with running_fleet(
            tmp_path,
            [backend_entry(box, "box", "ollama")],
            vram_gb={"box": 24},
            clock=clock,
            enabled=True,
            min_requests=20,
            auto_apply=True,
            analysis_interval_seconds=0.2,
        ) as (_, fleet):
            weekday_demand(fleet, "qwen2.5:14b", 30, range(9, 10))
            # The analysis loop (every 0.2 s here) finds it and applies it by itself.
            await wait_until(lambda: box.loaded() == ["qwen2.5:14b"], timeout=10, what="auto apply")
            (op,) = fleet.operations()
            assert op.recommendation and op.state in ("running", "succeeded")


async def test_nexus_serve_keeps_demand_history_in_its_state_store(tmp_path: Path) -> None:
    """The real wiring: [fleet] enabled, the SQLite store, two servers in a row."""
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, vram_bytes=24 * GiB) as box:
        backends = [backend_entry(box, "box", "ollama", vram_gb=24)]
        sections: dict[str, Any] = {
            "fleet": {"enabled": True},
            "storage": {"path": str(tmp_path / "nexus.db")},
        }
        async with running_nexus(tmp_path, backends, **sections) as nexus:
            for _ in range(3):
                await nexus.client.chat.completions.create(
                    model="llama3:8b", messages=[{"role": "user", "content": "hi"}]
                )
            nexus.state.recorder.flush()
            assert nexus.state.fleet is not None
            counts = dict(nexus.state.fleet.demand.counts)
            assert sum(counts["llama3:8b"].values()) == 3
            code, out = await asyncio.to_thread(
                lambda: (lambda r: (r.exit_code, r.output))(
                    CliRunner().invoke(fleet_cli, ["--url", nexus.url, "--json"])
                )
            )
            assert code == 0, out
        async with running_nexus(tmp_path, backends, **sections) as restarted:
            assert restarted.state.fleet is not None
            assert restarted.state.fleet.demand.counts == counts


async def test_operations_show_on_the_dashboard(tmp_path: Path) -> None:
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, vram_bytes=24 * GiB) as box:
        async with running_nexus(tmp_path, [backend_entry(box, "box", "ollama")]) as nexus:
            _, snap, _ = await nexus.get("/dashboard.json")
            assert snap["fleet"] is None  # nothing to show: the panel stays hidden
            status, op, _ = await nexus.post(
                "/admin/models/load", {"model": "phi3:mini", "backend": "box"}
            )
            assert status == 202, op

            async def shown() -> Any:
                _, snap, _ = await nexus.get("/dashboard.json")
                fleet = snap["fleet"]
                done = fleet and fleet["operations"][-1]["state"] == "succeeded"
                return fleet if done else None

            fleet = await wait_until(shown, timeout=10, what="the load on the dashboard")
            assert fleet["operations"][-1]["what"] == "load phi3:mini on box"


async def test_recommendations_show_on_the_dashboard(tmp_path: Path) -> None:
    clock = ManualClock(MONDAY_0830)
    async with FakeOllama(OLLAMA_MODELS, model_sizes=SIZES, vram_bytes=24 * GiB) as box:
        async with running_fleet(
            tmp_path,
            [backend_entry(box, "box", "ollama")],
            vram_gb={"box": 24},
            clock=clock,
            enabled=True,
            min_requests=20,
        ) as (nexus, fleet):
            _, snap, _ = await nexus.get("/dashboard.json")
            assert snap["fleet"] is None  # no operation, no recommendation yet
            weekday_demand(fleet, "qwen2.5:14b", 30, range(9, 10))
            (rec,) = await fleet.analyze()
            _, snap, _ = await nexus.get("/dashboard.json")
            assert snap["fleet"] == {
                "operations": [],
                "recommendations": [
                    {"id": rec.id, "reason": rec.reason, "confidence": rec.confidence}
                ],
            }
            async with aiohttp.ClientSession() as session:
                async with session.get(nexus.url + "/") as resp:
                    page = await resp.text()
            assert html.escape(rec.reason) in page
            assert f"nexus fleet apply {rec.id}" in page
            clock.advance(fleet.config.analysis_interval_seconds + 3600 * 24)  # expired
            _, snap, _ = await nexus.get("/dashboard.json")
            assert snap["fleet"] is None
