"""The dashboard's HTTP and WebSocket handlers, against a real Nexus and fake backends."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import openai
import pytest

from tests.dashboard.conftest import XSS_MODEL, XSS_NAME, Fleet, chat, receive_until
from tests.fakes import FakeModel, FakeOllama
from tests.helpers import backend_entry, running_nexus, wait_until


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


async def test_page_lists_backends_and_models_escaped(fleet: Fleet) -> None:
    await chat(fleet.nexus)
    status, body, headers = await fetch(fleet.nexus.url + "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    # Backends, their statuses and models, server-rendered.
    assert "ollama-box" in body
    assert "&lt;img src=x onerror=alert(1)&gt;" in body
    for model in ("llama3:8b", "llava:7b", "nomic-embed-text", "meta-llama/Llama-3.1-8B-Instruct"):
        assert model in body
    assert "&lt;b&gt;bold&lt;/b&gt;-model" in body
    assert body.count('class="badge">healthy<') == 2
    assert "128k ctx" in body and "4k ctx" in body and "8k ctx" in body
    assert 'title="vision: yes"' in body
    assert '<a class="refresh" href="/">Refresh</a>' in body
    # Nothing from the network became markup.
    assert XSS_NAME in body and XSS_MODEL not in body
    assert "<img" not in body
    # No inline script, style attribute or event handler: the CSP would block them anyway.
    assert not re.search(r"<script(?![^>]*\bsrc=)", body)
    assert not re.search(r"\sstyle=", body)
    assert not re.search(r"\son[a-z]+=", body.replace("onerror=alert(1)&gt;", ""))
    # The request shows in the history; its content does not.
    assert 'class="req lvl-ok"' in body
    assert "SECRET-CONTENT" not in body


async def test_assets_served_with_types_and_caching(fleet: Fleet) -> None:
    base = fleet.nexus.url
    _, body, _ = await fetch(base + "/")
    links = dict(
        (m.group(1), m.group(0)[m.group(0).index("/assets/") :])
        for m in re.finditer(r"/assets/([\w.]+)\?v=[0-9a-f]+", body)
    )
    assert set(links) == {"dashboard.css", "dashboard.js", "favicon.svg"}
    expected = {
        "dashboard.css": "text/css; charset=utf-8",
        "dashboard.js": "text/javascript; charset=utf-8",
        "favicon.svg": "image/svg+xml; charset=utf-8",
    }
    for name, url in links.items():
        status, text, headers = await fetch(base + url)
        assert status == 200, name
        assert headers["Content-Type"] == expected[name]
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert text
        # Unversioned: revalidate, and a matching ETag costs nothing.
        status, _, plain = await fetch(f"{base}/assets/{name}")
        assert status == 200 and plain["Cache-Control"] == "no-cache"
        status, text, _ = await fetch(
            f"{base}/assets/{name}", headers={"If-None-Match": plain["ETag"]}
        )
        assert status == 304 and text == ""
    _, js, _ = await fetch(base + links["dashboard.js"])
    assert "innerHTML" not in js.replace("Never innerHTML", "")
    for bad in (
        "/assets/nope.js",
        "/assets/..%2F__init__.py",
        "/assets/%2e%2e%2fpage.py",
        "/assets/",
    ):
        status, _, _ = await fetch(base + bad)
        assert status == 404, bad


async def test_polling_json_snapshot(fleet: Fleet) -> None:
    await chat(fleet.nexus)
    await chat(fleet.nexus, stream=True)
    status, snap, headers = await fleet.nexus.get("/dashboard.json")
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert snap["type"] == "snapshot"
    assert {b["name"] for b in snap["backends"]} == {"ollama-box", XSS_NAME}
    assert all(b["status"] == "healthy" for b in snap["backends"])
    assert [e["stream"] for e in snap["history"]] == [False, True]
    assert snap["seq"] == 2
    # Summed over buckets: the two requests may straddle a 10 s bucket boundary.
    assert sum(point[1] for point in snap["charts"]["all"]) == 2
    assert sum(point[1] for point in snap["charts"]["backends"]["ollama-box"]) == 2
    assert "SECRET-CONTENT" not in str(snap)


async def test_ws_pushes_history_deltas(fleet: Fleet) -> None:
    nexus = fleet.nexus
    async with aiohttp.ClientSession() as session, session.ws_connect(nexus.url + "/ws") as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "snapshot" and first["history"] == []
        await chat(nexus)
        await chat(nexus, "meta-llama/Llama-3.1-8B-Instruct", stream=True)
        with pytest.raises(openai.NotFoundError):
            await chat(nexus, "no-such-model")
        seen: dict[int, dict[str, Any]] = {}

        def has_three(msg: dict[str, Any]) -> bool:
            assert msg["type"] == "delta"
            seen.update((e["seq"], e) for e in msg.get("history", []))
            return len(seen) >= 3

        messages = await receive_until(ws, has_three)
        entries = [seen[k] for k in sorted(seen)]
        assert [e["stream"] for e in entries] == [False, True, False]
        assert [e["backend"] for e in entries[:2]] == ["ollama-box", XSS_NAME]
        assert [e["status"] for e in entries] == [200, 200, 404]
        assert entries[2]["error_type"] and entries[2]["model"] == "no-such-model"
        assert entries[1]["ttft_ms"] is not None
        assert all(e["ms"] > 0 for e in entries)
        assert "SECRET-CONTENT" not in str(messages)
        # Deltas carry what changed, not the whole state again.
        assert all("history" not in m or len(m["history"]) <= 3 for m in messages)


async def test_ws_status_change_notice(fleet: Fleet) -> None:
    nexus = fleet.nexus
    async with aiohttp.ClientSession() as session, session.ws_connect(nexus.url + "/ws") as ws:
        await ws.receive_json(timeout=5)
        hub = nexus.server.app.dashboard.hub
        await wait_until(
            lambda: [v["status"] for v in hub.backends.values()] == ["healthy"] * 2,
            what="the broadcaster has seen both healthy once",
        )
        await fleet.vllm.stop()
        notices: list[dict[str, Any]] = []
        changed: list[dict[str, Any]] = []

        def unhealthy(msg: dict[str, Any]) -> bool:
            notices.extend(msg.get("notices", []))
            changed.extend(msg.get("backends", []))
            return any(n["to"] == "unhealthy" for n in notices)

        await receive_until(ws, unhealthy)
        notice = next(n for n in notices if n["to"] == "unhealthy")
        assert notice["backend"] == XSS_NAME
        assert notice["text"] == f"{XSS_NAME} is now unhealthy"
        assert notice["level"] == "bad" and notice["from"] == "healthy"
        view = [b for b in changed if b["name"] == XSS_NAME][-1]
        assert view["status"] == "unhealthy"
        # The polling snapshot keeps the notice for viewers who arrive later.
        _, snap, _ = await nexus.get("/dashboard.json")
        assert any(n["to"] == "unhealthy" for n in snap["notices"])
        _, page, _ = await fetch(nexus.url + "/")
        assert "is now unhealthy" in page and 'class="card lvl-bad"' in page


async def test_many_viewers_never_delay_requests(fleet: Fleet) -> None:
    """50 viewers, half of which never read a byte, a few of which vanish mid-way."""
    nexus = fleet.nexus
    hub = nexus.server.app.dashboard.hub
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(nexus.url + "/ws") for _ in range(50)]
        readers = sockets[:25]
        got: list[set[int]] = [set() for _ in readers]

        async def read(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    got[i].update(e["seq"] for e in msg.json().get("history", []))

        tasks = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(readers)]
        await wait_until(lambda: len(hub.viewers) >= 50, what="50 viewers")
        # Some viewers drop dead without a close frame.
        for ws in sockets[45:]:
            transport = ws._response.connection.transport  # type: ignore[union-attr]
            transport.abort()
        started = time.perf_counter()
        await asyncio.gather(
            *(chat(nexus, stream=i % 2 == 0) for i in range(40)),
        )
        elapsed = time.perf_counter() - started
        assert elapsed < 15  # they all completed (generous: this is no benchmark)
        await wait_until(
            lambda: all(len(g) >= 40 for g in got),
            timeout=10,
            interval=0.05,
            what="every reader saw the 40 requests",
        )
        assert hub.seq == 40
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ws in sockets[:45]:
            await ws.close()
    await wait_until(lambda: not hub.viewers, what="every viewer gone")


async def test_shutdown_closes_viewers_promptly(tmp_path: Any) -> None:
    async with FakeOllama([FakeModel("llama3:8b")]) as fake, aiohttp.ClientSession() as session:
        cm = running_nexus(tmp_path, [backend_entry(fake, "one", "ollama")])
        nexus = await cm.__aenter__()
        sockets = [await session.ws_connect(nexus.url + "/ws") for _ in range(5)]
        for ws in sockets:
            await ws.receive_json(timeout=5)

        async def last_message(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    return msg

        readers = [asyncio.create_task(last_message(ws)) for ws in sockets]
        idle = await session.ws_connect(nexus.url + "/ws")  # one that never reads
        started = time.perf_counter()
        await cm.__aexit__(None, None, None)
        assert time.perf_counter() - started < 3  # not held up by the open sockets
        for msg in await asyncio.wait_for(asyncio.gather(*readers), 5):
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
        await idle.close()


async def test_ws_refuses_other_origins(fleet: Fleet) -> None:
    url = fleet.nexus.url + "/ws"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(url, origin="http://evil.example")
        assert info.value.status == 403
        async with session.ws_connect(url, origin=fleet.nexus.url) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "snapshot"
