"""What real clients found, against two real llama.cpp servers (llama-cpp-python): a
json_schema request they refuse with a 500 is the request's fault, aliases are models,
panic routing after both servers come back, and a burst spread over single-slot servers.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from nexus.registry import BackendStatus
from tests.helpers import Nexus, running_nexus, wait_until
from tests.interop.conftest import MODEL_ALIAS, LlamaServer, backend_entries

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180, func_only=True)]

MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
SECTIONS: dict[str, Any] = {
    "server": {"request_timeout_seconds": 60, "stream_idle_timeout_seconds": 30},
    "health_check": {"timeout_seconds": 10},
}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "greeting", "schema": {"type": "object"}}}


async def chat(nexus: Nexus, **extra: Any) -> Any:
    return await nexus.client.chat.completions.with_raw_response.create(
        model=MODEL_ALIAS, messages=MESSAGES, **{"max_tokens": 8, **extra}
    )


async def all_routable(nexus: Nexus) -> None:
    await wait_until(
        lambda: all(b.routable for b in nexus.state.registry),
        timeout=30,
        what="both servers routable",
    )


async def test_json_schema_refused_by_both_servers_is_a_400_and_costs_no_backend(
    tmp_path: Path, llama_servers: list[LlamaServer]
) -> None:
    async with running_nexus(tmp_path, backend_entries(llama_servers), **SECTIONS) as nexus:
        await all_routable(nexus)
        client = nexus.client.with_options(max_retries=2)  # the SDK's default retries
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.parse(  # what instructor / structured outputs send
                model=MODEL_ALIAS,
                messages=MESSAGES,
                max_tokens=16,
                response_format=SCHEMA,
            )
        error = caught.value.body
        assert isinstance(error, dict) and error["context"] == {"upstream_status": 500}
        assert "json_object" in error["message"]  # the backend's own explanation
        registry = nexus.state.registry
        assert [b.failed_requests for b in registry] == [0, 0]
        assert [b.total_requests for b in registry] == [1, 1]  # two calls, not six
        # Ordinary traffic still spreads over both: neither was blamed.
        assert nexus.state.quality.error_rates(MODEL_ALIAS, time.monotonic()) is None
        reply = await nexus.client.chat.completions.create(
            model=MODEL_ALIAS, messages=MESSAGES, max_tokens=8
        )
        assert reply.choices[0].message.content is not None


async def test_aliases_are_models_a_picker_can_see(
    tmp_path: Path, llama_servers: list[LlamaServer]
) -> None:
    routing = {"aliases": {"gpt-4o-mini": MODEL_ALIAS}}
    async with running_nexus(
        tmp_path, backend_entries(llama_servers), routing=routing, **SECTIONS
    ) as nexus:
        await all_routable(nexus)
        ids = [m.id for m in (await nexus.client.models.list()).data]
        assert MODEL_ALIAS in ids and "gpt-4o-mini" in ids
        alias = await nexus.client.models.retrieve("gpt-4o-mini")
        assert alias.model_dump()["alias_of"] == MODEL_ALIAS
        reply = await nexus.client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=8
        )
        assert reply.model == "gpt-4o-mini"


async def test_panic_routing_serves_as_soon_as_the_servers_are_back(
    tmp_path: Path, llama_servers: list[LlamaServer]
) -> None:
    # Probes every 30 s, as by default: after both servers die and come back, the health
    # checker needs two good probes (a minute) to believe it. Requests must not wait for it.
    health = {"interval_seconds": 30, "timeout_seconds": 10, "failure_threshold": 1}
    sections = {**SECTIONS, "health_check": health}
    async with running_nexus(tmp_path, backend_entries(llama_servers), **sections) as nexus:
        await all_routable(nexus)
        for server in llama_servers:
            server.kill()
        for backend in nexus.state.registry:
            await nexus.state.health.check(backend)
        assert {b.status for b in nexus.state.registry} == {BackendStatus.UNHEALTHY}
        for server in llama_servers:
            server.start()
        for server in llama_servers:
            server.wait_ready()
        started = time.perf_counter()
        resp = await chat(nexus)
        assert resp.headers["X-Nexus-Route-Reason"] == "panic"
        assert time.perf_counter() - started < 15  # one generation, not the recovery time
        # Each success counts toward recovery (two are needed): a server is healthy again
        # within two requests each, without waiting for the probes.
        for _ in range(4):
            if any(b.status is BackendStatus.HEALTHY for b in nexus.state.registry):
                break
            await chat(nexus)
        assert any(b.status is BackendStatus.HEALTHY for b in nexus.state.registry)


async def burst(nexus: Nexus, n: int) -> tuple[float, list[str]]:
    started = time.perf_counter()
    replies = await asyncio.gather(*(chat(nexus, max_tokens=32, temperature=0) for _ in range(n)))
    return time.perf_counter() - started, sorted(r.headers["X-Nexus-Backend"] for r in replies)


async def test_single_slot_servers_share_a_burst_whatever_their_priorities(
    tmp_path: Path, llama_servers: list[LlamaServer], capsys: pytest.CaptureFixture[str]
) -> None:
    # llama-cpp-python generates for one request at a time and has no /props to say so:
    # the capacity comes from max_concurrent in the config.
    def entries(**extra: Any) -> list[dict[str, Any]]:
        return [
            {**entry, "priority": priority, **extra}
            for entry, priority in zip(backend_entries(llama_servers), (10, 20), strict=True)
        ]

    (tmp_path / "blind").mkdir()
    (tmp_path / "aware").mkdir()
    async with running_nexus(tmp_path / "blind", entries(), **SECTIONS) as nexus:
        await all_routable(nexus)
        blind, served = await burst(nexus, 4)
        assert served == ["llama-a"] * 4  # priority decides: all four wait on one slot
    async with running_nexus(tmp_path / "aware", entries(max_concurrent=1), **SECTIONS) as nexus:
        await all_routable(nexus)
        aware, served = await burst(nexus, 4)
        # Both serve; the two that wait in the queue go to whichever server frees first.
        assert set(served) == {"llama-a", "llama-b"}
    with capsys.disabled():
        print(
            f"\n4 concurrent chats over two single-slot servers: {blind:.2f} s capacity-blind,"
            f" {aware:.2f} s with max_concurrent = 1"
        )  # (a measurement, not asserted: docs/benchmarks.md; timing bounds flake under load)


async def test_a_burst_on_a_one_slot_server_waits_in_the_queue(
    tmp_path: Path, llama_servers: list[LlamaServer]
) -> None:
    entry = {**backend_entries(llama_servers[:1])[0], "max_concurrent": 1}
    async with running_nexus(tmp_path, [entry], **SECTIONS) as nexus:
        await all_routable(nexus)
        backend = nexus.state.registry.find(entry["name"])
        assert backend is not None
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, backend.pending_requests)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            replies = await asyncio.gather(*(chat(nexus, temperature=0) for _ in range(8)))
        finally:
            watcher.cancel()
        assert [r.http_response.status_code for r in replies] == [200] * 8  # no 503
        assert peak == 1  # never more than its one slot at the server
        waited = [
            int(r.headers["X-Nexus-Queue-Wait-Ms"])
            for r in replies
            if "X-Nexus-Queue-Wait-Ms" in r.headers
        ]
        assert len(waited) >= 6 and max(waited) > 0
