"""Overload: fast 503s, never a hang. SIGTERM under load: drain, refuse new work, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp

from tests.fakes import Behavior, FakeModel, FakeVLLM
from tests.helpers import backend_entry, running_nexus, spawn_nexus, wait_until, write_config

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_beyond_max_concurrent_requests_fast_503s(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("m")], stream_chunks=1) as fake:
        # Slow enough that all 200 arrive while the first 20 are still with the backend, even
        # on a loaded machine (at 0.5 s, some finished early and let later ones in).
        fake.chat_behavior, fake.delay = Behavior.SLOW, 2.0
        server = {"max_concurrent_requests": 20}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], server=server
        ) as nexus:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as s:

                async def one(stream: bool) -> tuple[int, float, str | None]:
                    started = time.monotonic()
                    async with s.post(
                        nexus.url + "/v1/chat/completions", json={**BODY, "stream": stream}
                    ) as r:
                        await r.read()
                        return r.status, time.monotonic() - started, r.headers.get("Retry-After")

                results = await asyncio.gather(*(one(i % 2 == 0) for i in range(200)))
            ok = [r for r in results if r[0] == 200]
            rejected = [r for r in results if r[0] == 503]
            assert len(ok) == 20 and len(rejected) == 180
            assert all(r[2] for r in rejected)
            # Rejections do not wait for the slow ones: every 503 is back before any 200.
            assert max(r[1] for r in rejected) < min(r[1] for r in ok)
            assert nexus.state.in_flight == 0 and nexus.pending() == {"v": 0}


async def test_sigterm_under_load_drains_everything_and_exits_zero(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("m")], stream_chunks=6) as fake:
        fake.chat_behavior, fake.delay = Behavior.SLOW, 0.2
        config = write_config(
            tmp_path,
            [backend_entry(fake, "v", "vllm")],
            server={"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 15},
        )
        async with spawn_nexus(config) as nexus:
            await nexus.wait_healthy(backends=1)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

                async def one(stream: bool) -> tuple[int, bytes]:
                    async with s.post(
                        nexus.url + "/v1/chat/completions", json={**BODY, "stream": stream}
                    ) as r:
                        return r.status, await r.read()

                in_flight = [asyncio.create_task(one(i % 2 == 0)) for i in range(40)]
                await wait_until(
                    lambda: len(fake.chat_requests) == 40, what="all 40 at the backend"
                )
                nexus.proc.send_signal(signal.SIGTERM)
                await wait_until(
                    lambda: any("shutting down" in line for line in nexus.lines),
                    what="the signal handled",
                )
                async with s.post(nexus.url + "/v1/chat/completions", json=BODY) as late:
                    assert late.status == 503 and late.headers["Retry-After"]
                    assert (await late.json())["error"]["code"] == "shutting_down"
                results = await asyncio.gather(*in_flight)
            assert [status for status, _ in results] == [200] * 40
            assert all(
                raw.rstrip().endswith(b"[DONE]")
                for (_, raw), i in zip(results, range(40), strict=True)
                if i % 2 == 0
            )
            async with asyncio.timeout(10):
                code = await nexus.proc.wait()
            assert code == 0, "\n".join(nexus.lines[-20:])
            assert any("shutting down" in line for line in nexus.lines)


async def test_streams_cut_by_the_grace_period_get_an_error_event_and_their_own_status(
    tmp_path: Path,
) -> None:
    async with FakeVLLM([FakeModel("m")], stream_chunks=40) as fake:
        fake.chat_behavior, fake.delay = Behavior.SLOW, 0.2
        config = write_config(
            tmp_path,
            [backend_entry(fake, "v", "vllm")],
            server={"host": "127.0.0.1", "port": 0, "shutdown_grace_seconds": 0.5},
            logging={"format": "json"},
        )
        async with spawn_nexus(config) as nexus:
            await nexus.wait_healthy(backends=1)  # the backend's first probe is in
            async with aiohttp.ClientSession() as s:
                async with s.post(
                    nexus.url + "/v1/chat/completions", json={**BODY, "stream": True}
                ) as r:
                    assert r.status == 200
                    first = await r.content.readuntil(b"\n\n")
                    assert first.startswith(b"data: {")
                    nexus.proc.send_signal(signal.SIGTERM)
                    rest = await asyncio.wait_for(r.content.read(), 10)
            events = [e[6:] for e in rest.split(b"\n\n") if e.startswith(b"data: ")]
            error = json.loads(events[-2])["error"]
            assert error["code"] == "shutting_down" and events[-1] == b"[DONE]"
            async with asyncio.timeout(10):
                assert await nexus.proc.wait() == 0
            lines = [json.loads(line) for line in nexus.lines if line.startswith("{")]
            request = next(line for line in lines if line.get("message") == "request")
            assert request["status"] == 503 and request["error_type"] == "shutting_down"
