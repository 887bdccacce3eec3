"""LM Studio 0.4 and llama.cpp's router mode load and unload; other servers answer 501.

The two fakes below add, to the project's LM Studio and llama.cpp fakes, the management
endpoints of the newer servers, with the shapes their documentation gives
(lmstudio-ai/docs ``1_developer/2_rest/{list,load,unload}.md``; ggml-org/llama.cpp
``tools/server/README.md``, "Using multiple models"). They are real HTTP servers on
127.0.0.1 like every fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from nexus.config import FleetConfig
from nexus.errors import BackendUnreachable
from nexus.fleet import lmstudio as lmstudio_adapter
from nexus.fleet.errors import NotSupported
from nexus.fleet.operations import Operation
from nexus.fleet.service import Fleet
from nexus.registry import Backend, Model, Registry
from nexus.transport import Pool
from tests.fakes import FakeLlamaCpp, FakeLMStudio, FakeModel, FakeVLLM
from tests.fakes.server import Route, json_response
from tests.helpers import wait_until

GiB = 2**30


class LMStudio04(FakeLMStudio):
    """LM Studio 0.4+: /api/v1/models, /api/v1/models/load and /api/v1/models/unload."""

    def __init__(self, models: list[FakeModel]) -> None:
        super().__init__(models)
        self.instances: dict[str, list[str]] = {}  # model key -> loaded instance ids

    def _extra_routes(self) -> list[Route]:
        return [
            *super()._extra_routes(),
            ("GET", "/api/v1/models", self._v1_list),
            ("POST", "/api/v1/models/load", self._v1_load),
            ("POST", "/api/v1/models/unload", self._v1_unload),
        ]

    async def _v1_list(self, request: web.Request) -> web.Response:
        entries = [
            {
                "type": "llm",
                "publisher": "lmstudio-community",
                "key": m.id,
                "display_name": m.id,
                "size_bytes": 2 * GiB,
                "loaded_instances": [
                    {"id": i, "config": {"context_length": 4096}}
                    for i in self.instances.get(m.id, [])
                ],
                "max_context_length": m.context_length,
                "format": "gguf",
            }
            for m in self.models
        ]
        return json_response({"models": entries})

    async def _v1_load(self, request: web.Request) -> web.Response:
        key = (await request.json())["model"]
        if self.find_model(key) is None:
            return json_response({"error": f"Model {key} not found"}, status=404)
        loaded = self.instances.setdefault(key, [])
        instance = key if not loaded else f"{key}:{len(loaded) + 1}"  # LM Studio's own style
        loaded.append(instance)
        return json_response(
            {
                "model_instance_id": instance,
                "config": {"context_length": 4096},
                "load_time_seconds": 0.1,
            }
        )

    async def _v1_unload(self, request: web.Request) -> web.Response:
        instance = (await request.json())["instance_id"]
        for ids in self.instances.values():
            if instance in ids:
                ids.remove(instance)
                return json_response({"instance_id": instance})
        return json_response({"error": f"No model instance {instance}"}, status=404)


class LlamaRouter(FakeLlamaCpp):
    """llama-server started without a model: GET /models with statuses, load and unload."""

    def __init__(self, models: list[FakeModel]) -> None:
        super().__init__(models)
        self.status: dict[str, dict[str, Any]] = {m.id: {"value": "unloaded"} for m in models}
        self.crashing: set[str] = set()  # models whose process exits while loading
        self._loads: set[asyncio.Task[None]] = set()

    def served_models(self) -> list[FakeModel]:
        return self.models

    def _extra_routes(self) -> list[Route]:
        return [
            *super()._extra_routes(),
            ("GET", "/models", self._list),
            ("POST", "/models/load", self._load),
            ("POST", "/models/unload", self._unload),
        ]

    async def _list(self, request: web.Request) -> web.Response:
        data = [
            {"id": m.id, "path": f"/models/{m.id}.gguf", "status": self.status[m.id]}
            for m in self.models
        ]
        return json_response({"data": data})

    async def _load(self, request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        args = ["llama-server", "-ctx", "4096"]
        self.status[model] = {"value": "loading", "args": args}
        task = asyncio.create_task(self._finish(model, args))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)
        return json_response({"success": True})

    async def _finish(self, model: str, args: list[str]) -> None:
        await asyncio.sleep(0.3)  # the model's own process starting
        if model in self.crashing:
            self.status[model] = {"value": "unloaded", "args": args, "failed": True, "exit_code": 1}
        else:
            self.status[model] = {"value": "loaded", "args": args}

    async def _unload(self, request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        self.status[model] = {"value": "unloaded"}
        return json_response({"success": True})


def fleet_for(url: str, kind: str, models: list[str]) -> tuple[Fleet, Pool]:
    registry = Registry()
    backend = registry.add_backend(Backend(name="box", url=url, type=kind))
    registry.update_models(backend.id, [Model(id=m) for m in models])
    pool = Pool(2, 5)
    return Fleet(FleetConfig(), registry, pool), pool


async def finished(op: Operation) -> Operation:
    await wait_until(lambda: op.done, timeout=10, what=op.describe())
    return op


@pytest.fixture
async def lmstudio() -> AsyncIterator[LMStudio04]:
    async with LMStudio04([FakeModel("qwen3-4b"), FakeModel("gemma-3-1b")]) as fake:
        yield fake


async def test_lm_studio_loads_once_and_unloads_each_instance(lmstudio: LMStudio04) -> None:
    fleet, pool = fleet_for(lmstudio.url, "lmstudio", ["qwen3-4b", "gemma-3-1b"])
    try:
        op = await finished(await fleet.load("box", "qwen3-4b"))
        assert op.state == "succeeded", op.reason
        assert lmstudio.instances == {"qwen3-4b": ["qwen3-4b"]}
        again = await finished(await fleet.load("box", "qwen3-4b"))
        assert again.state == "succeeded"
        assert lmstudio.instances == {"qwen3-4b": ["qwen3-4b"]}  # no second instance
        backend = fleet.registry.find("box")
        assert backend is not None
        residency = await fleet.adapters["lmstudio"].residency(fleet.http, backend)
        assert residency.loaded == {"qwen3-4b": 2 * GiB}
        assert residency.sizes == {"qwen3-4b": 2 * GiB, "gemma-3-1b": 2 * GiB}
        lmstudio.instances["qwen3-4b"].append("qwen3-4b:2")  # a second one, loaded in the app
        op = await finished(await fleet.unload("box", "qwen3-4b"))
        assert op.state == "succeeded", op.reason
        assert lmstudio.instances == {"qwen3-4b": []}
        unloads = [r.json for r in lmstudio.requests if r.path == "/api/v1/models/unload"]
        assert unloads == [{"instance_id": "qwen3-4b"}, {"instance_id": "qwen3-4b:2"}]
        with pytest.raises(NotSupported, match="catalog name"):
            await fleet.load("box", "qwen3-4b", pull=True)
    finally:
        pool.close()


class Passes(list[dict[str, Any]]):
    """A models list that counts the passes made over it."""

    passes = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.passes += 1
        return super().__iter__()


async def test_lm_studio_residency_is_one_pass_over_many_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [f"model-{i}" for i in range(300)]
    async with LMStudio04([FakeModel(n) for n in names]) as many:
        many.instances = {n: [n] for n in names[::3]}  # every third one loaded
        many.instances["model-1"] = []  # listed with no instance: not loaded
        fleet, pool = fleet_for(many.url, "lmstudio", names)
        seen: list[Passes] = []
        real_listing = lmstudio_adapter._listing

        def counted(payload: Any) -> list[dict[str, Any]] | None:
            listing = real_listing(payload)
            seen.append(Passes(listing or []))
            return seen[-1] if listing is not None else None

        monkeypatch.setattr(lmstudio_adapter, "_listing", counted)
        try:
            backend = fleet.registry.find("box")
            assert backend is not None
            residency = await fleet.adapters["lmstudio"].residency(fleet.http, backend)
            assert residency.loaded == {n: 2 * GiB for n in names[::3]}
            assert residency.sizes == dict.fromkeys(names, 2 * GiB)
            assert len(seen) == 1 and seen[0].passes <= 3  # not one pass per model
        finally:
            pool.close()


async def test_old_lm_studio_and_a_single_model_llama_cpp_answer_501() -> None:
    async with (
        FakeLMStudio([FakeModel("qwen3-4b")]) as old,
        FakeLlamaCpp([FakeModel("smol")]) as one,
    ):
        fleet, pool = fleet_for(old.url, "lmstudio", ["qwen3-4b"])
        try:
            # Old LM Studio answers 200 with an error text on unknown paths: still a 501.
            with pytest.raises(NotSupported, match=r"LM Studio.*0\.4\.0"):
                await fleet.load("box", "qwen3-4b")
        finally:
            pool.close()
        fleet, pool = fleet_for(one.url, "llamacpp", ["smol"])
        try:
            with pytest.raises(NotSupported, match="router mode"):
                await fleet.unload("box", "smol")
            assert fleet.operations() == []
        finally:
            pool.close()


async def test_llama_cpp_router_loads_unloads_and_reports_a_dead_load() -> None:
    async with LlamaRouter([FakeModel("qwen3-8b"), FakeModel("gemma-3-4b")]) as router:
        fleet, pool = fleet_for(router.url, "llamacpp", ["qwen3-8b", "gemma-3-4b"])
        try:
            op = await finished(await fleet.load("box", "qwen3-8b"))
            assert op.state == "succeeded", op.reason
            assert router.status["qwen3-8b"]["value"] == "loaded"
            backend = fleet.registry.find("box")
            assert backend is not None
            residency = await fleet.adapters["llamacpp"].residency(fleet.http, backend)
            assert residency.loaded == {"qwen3-8b": None}  # the router tells no sizes
            op = await finished(await fleet.unload("box", "qwen3-8b"))
            assert op.state == "succeeded" and router.status["qwen3-8b"] == {"value": "unloaded"}
            router.crashing.add("gemma-3-4b")
            op = await finished(await fleet.load("box", "gemma-3-4b"))
            assert op.state == "failed" and "exited with code 1" in op.reason
            with pytest.raises(NotSupported, match="Hugging Face"):
                await fleet.load("box", "gemma-3-4b", pull=True)
        finally:
            pool.close()


@pytest.mark.parametrize("kind", ["vllm", "exo", "generic", "openai"])
async def test_types_without_a_lifecycle_api_answer_501_naming_the_type(kind: str) -> None:
    async with FakeVLLM([FakeModel("m")]) as server:
        fleet, pool = fleet_for(server.url, kind, ["m"])
        try:
            with pytest.raises(NotSupported, match=f"of type {kind}"):
                await fleet.load("box", "m")
            assert server.requests == []  # refused without asking the server
        finally:
            pool.close()


async def test_an_unreachable_server_is_a_502_not_a_501() -> None:
    fleet, pool = fleet_for("http://127.0.0.1:9", "lmstudio", ["m"])  # nothing listens on 9
    try:
        with pytest.raises(BackendUnreachable, match="refused"):
            await fleet.load("box", "m")
    finally:
        pool.close()
