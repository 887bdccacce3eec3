"""Regression tests for the attacker's review, each failing on the code before the fixes
(next to them, the cases that must keep working: own origin, admin token, no Content-Type).

Cross-site requests to the admin API and the dashboard's WebSocket, backend HTML served on
Nexus's origin, decompression and stream bombs, redirects, probe keys, names, admin races,
metric series of removed backends, ``Expect`` handling, backend URLs and SSE edge cases.
Nexus is built by ``running_nexus`` exactly as ``nexus serve`` builds it; the backends are
real servers on 127.0.0.1 (:mod:`tests.fakes.hostile`), the clients real sockets.

Memory is measured on this process (Nexus, the fakes and the clients all run in it): the
peak of VmRSS during the hostile exchange, over VmRSS before it. ``HARDENING_SMALL_BOMBS=1``
shrinks the bombs (300 MiB instead of 1 GiB, a 20 MiB event instead of 200 MiB) so that the
check against the old code does not take the machine's memory with it.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from nexus import config as config_mod
from nexus.registry import BackendStatus, backend_id
from tests.fakes import FakeModel, FakeVLLM
from tests.fakes.hostile import Chat, HostileBackend, Probe, gzip_bomb
from tests.helpers import Nexus, running_nexus, wait_until, write_config

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]
MB = 1 << 20
SMALL = os.environ.get("HARDENING_SMALL_BOMBS") == "1"
BOMB = (300 if SMALL else 1024) * MB  # inflated size of a gzip bomb
BOMB_GROWTH_LIMIT = (200 if SMALL else 250) * MB
GIANT = (20 if SMALL else 200) * MB  # size of the event that never ends
STREAM_GROWTH_LIMIT = 100 * MB


# -- harness -------------------------------------------------------------------------------


@asynccontextmanager
async def behind_nexus(
    tmp_path: Path, **sections: Any
) -> AsyncIterator[tuple[Nexus, HostileBackend]]:
    """A HostileBackend (model "m") as the configured backend "h", behind a running Nexus."""
    async with HostileBackend() as fake:
        backends = [{"name": "h", "url": fake.url, "type": "vllm"}]
        async with running_nexus(tmp_path, backends, **sections) as nexus:
            yield nexus, fake


async def call(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    json: Any = None,
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, data=data, json=json) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def error_of(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    assert set(data) == {"error"}, data
    assert {"message", "type", "param", "code"} <= set(data["error"]), data
    return data["error"]  # type: ignore[no-any-return]


def port_of(nexus: Nexus) -> int:
    return int(nexus.url.rsplit(":", 1)[1])


async def admin_add(
    nexus: Nexus, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    status, _, raw = await call("POST", nexus.url + "/admin/backends", json=body, headers=headers)
    return status, raw


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; the bytes of the first whole answer (a
    ``100 Continue`` sent first would be its start)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = b""
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                data += chunk
                head, sep, payload = data.partition(b"\r\n\r\n")
                if sep and head.startswith(b"HTTP/1.1 100"):
                    break  # an interim answer: what the test wants to see
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and length and len(payload) >= int(length.group(1)):
                    break
        return data
    finally:
        writer.close()


async def sse_events(
    nexus: Nexus, timeout: float = 20.0
) -> tuple[int, CIMultiDict[str], list[bytes]]:
    """A streamed chat through Nexus: status, headers and the ``data`` of each event."""
    body = {"model": "m", "stream": True, "messages": MSG}
    async with asyncio.timeout(timeout):
        status, headers, raw = await call("POST", nexus.url + CHAT, json=body)
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            events.append(b"\n".join(data))
    return status, headers, events


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    assert match, field
    return int(match.group(1))


class PeakRSS:
    """Peak resident memory of this process during a block, over what it was before.

    The kernel's high-water mark (reset through /proc/self/clear_refs) catches every peak;
    a sampling thread backs it up where the reset is not allowed."""

    def __enter__(self) -> PeakRSS:
        self.base = _status_kb("VmRSS") * 1024
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm = True
        except OSError:
            self.hwm = False
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _status_kb("VmRSS") * 1024)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm:
            self.peak = max(self.peak, _status_kb("VmHWM") * 1024)

    @property
    def growth(self) -> int:
        return self.peak - self.base


# -- 1. cross-site requests to the admin API and the dashboard ------------------------------

EVIL = "http://evil.example"


@pytest.mark.parametrize(
    ("case", "origin", "host", "ctype", "expected"),
    [
        ("issue repro: cross-origin no-cors text/plain", EVIL, None, "text/plain", (403, 415)),
        ("cross-origin JSON", EVIL, None, "application/json", (403,)),
        ("text/plain without Origin", None, None, "text/plain", (415,)),
        ("form type without Origin", None, None, "application/x-www-form-urlencoded", (415,)),
        ("multipart without Origin", None, None, "multipart/form-data; boundary=x", (415,)),
        ("same host, other port", "http://127.0.0.1:9999", None, "application/json", (403,)),
        (
            "DNS rebinding: foreign Host, matching Origin",
            "http://evil.example:{port}",
            "evil.example:{port}",
            "application/json",
            (403,),
        ),
        ("DNS rebinding without Origin", None, "evil.example:{port}", "application/json", (403,)),
        ("own origin, JSON", "http://127.0.0.1:{port}", None, "application/json", (201,)),
        ("no Origin from loopback, JSON", None, None, "application/json", (201,)),
    ],
)
async def test_admin_add_only_from_our_own_pages_and_as_json(
    tmp_path: Path,
    case: str,
    origin: str | None,
    host: str | None,
    ctype: str,
    expected: tuple[int, ...],
) -> None:
    async with behind_nexus(tmp_path) as (nexus, _), FakeVLLM([FakeModel("x")]) as target:
        port = port_of(nexus)
        headers = {"Content-Type": ctype}
        if origin is not None:
            headers["Origin"] = origin.format(port=port)
        if host is not None:
            headers["Host"] = host.format(port=port)
        payload = orjson.dumps({"url": target.url, "name": "added", "type": "vllm"})
        status, _, raw = await call(
            "POST", nexus.url + "/admin/backends", headers=headers, data=payload
        )
        assert status in expected, (case, status, raw[:300])
        added = nexus.state.registry.find("added")
        if status == 201:
            assert added is not None and added.status is BackendStatus.HEALTHY
        else:
            error = error_of(raw)
            assert added is None, case
            assert [b.name for b in nexus.state.registry] == ["h"]
            assert error["code"] == ("forbidden" if status == 403 else "unsupported_media_type")
            if status == 415:
                assert "application/json" in error["message"]
            assert target.requests == []  # never even probed


@pytest.mark.parametrize(
    ("case", "origin", "host", "expected"),
    [
        ("cross-origin", EVIL, None, 403),
        ("same host, other port", "http://127.0.0.1:9999", None, 403),
        ("DNS rebinding", "http://evil.example:{port}", "evil.example:{port}", 403),
        ("own origin", "http://127.0.0.1:{port}", None, 200),
        ("no Origin from loopback", None, None, 200),
    ],
)
async def test_admin_delete_only_from_our_own_pages(
    tmp_path: Path, case: str, origin: str | None, host: str | None, expected: int
) -> None:
    async with behind_nexus(tmp_path) as (nexus, _):
        port = port_of(nexus)
        headers = {}
        if origin is not None:
            headers["Origin"] = origin.format(port=port)
        if host is not None:
            headers["Host"] = host.format(port=port)
        status, _, raw = await call("DELETE", nexus.url + "/admin/backends/h", headers=headers)
        assert status == expected, (case, raw[:300])
        if expected == 403:
            assert error_of(raw)["code"] == "forbidden"
            assert nexus.state.registry.find("h") is not None
        else:
            assert nexus.state.registry.find("h") is None


@pytest.mark.parametrize(
    ("case", "origin", "host", "accepted"),
    [
        ("same host, other port", "http://127.0.0.1:9999", None, False),
        (
            "DNS rebinding: foreign Host, matching Origin",
            "http://evil.example:{port}",
            "evil.example:{port}",
            False,
        ),
        ("cross-origin", EVIL, None, False),
        ("own origin", "http://127.0.0.1:{port}", None, True),
    ],
)
async def test_dashboard_websocket_only_for_our_own_origin(
    tmp_path: Path, case: str, origin: str, host: str | None, accepted: bool
) -> None:
    async with behind_nexus(tmp_path) as (nexus, _):
        port = port_of(nexus)
        headers = {"Host": host.format(port=port)} if host else {}
        async with aiohttp.ClientSession() as session:
            try:
                async with asyncio.timeout(10):
                    ws = await session.ws_connect(
                        nexus.url.replace("http", "ws") + "/ws",
                        origin=origin.format(port=port),
                        headers=headers,
                    )
            except aiohttp.WSServerHandshakeError as exc:
                assert not accepted, (case, exc.status)
                assert exc.status == 403, case
                return
            async with ws:
                assert accepted, f"{case}: the WebSocket was accepted"
                async with asyncio.timeout(10):
                    msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.TEXT
                assert isinstance(msg.json(), dict)


async def test_admin_token_holder_may_use_any_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scripts on other machines reach Nexus under names of their own: a token is enough."""
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", "tok-hardening")
    async with behind_nexus(tmp_path) as (nexus, _):
        port = port_of(nexus)
        auth = {"Authorization": "Bearer tok-hardening", "Host": f"nexus.lab.example:{port}"}
        status, _, raw = await call("GET", nexus.url + "/admin/backends", headers=auth)
        assert status == 200 and [b["name"] for b in orjson.loads(raw)["backends"]] == ["h"]
        async with FakeVLLM([FakeModel("x")]) as target:
            status, raw = await admin_add(
                nexus, {"url": target.url, "name": "remote", "type": "vllm"}, auth
            )
            assert status == 201, raw
        status, _, _ = await call("DELETE", nexus.url + "/admin/backends/remote", headers=auth)
        assert status == 200
        # The same foreign host without the token is still refused.
        status, _, raw = await call(
            "GET", nexus.url + "/admin/backends", headers={"Host": auth["Host"]}
        )
        assert status == 403


# -- 3. what a browser may be made to render on Nexus's origin -----------------------------


async def test_backend_html_error_is_relayed_as_json(tmp_path: Path) -> None:
    async with behind_nexus(tmp_path) as (nexus, fake):
        fake.chat = Chat.HTML_400
        fake.html = b"<html><script>fetch('/admin/backends')</script>Bad thing</html>"
        status, headers, raw = await call(
            "POST", nexus.url + CHAT, json={"model": "m", "messages": MSG}
        )
        assert status == 400
        assert headers["Content-Type"].startswith("application/json")
        assert headers["X-Content-Type-Options"] == "nosniff"
        error = error_of(raw)
        assert "400" in error["message"] and "'h'" in error["message"], error
        assert fake.chat_requests  # it really was the backend's answer


async def test_every_answer_says_nosniff_and_the_page_has_a_csp(tmp_path: Path) -> None:
    async with behind_nexus(tmp_path) as (nexus, fake):
        seen: dict[str, CIMultiDict[str]] = {}
        ok_chat = {"model": "m", "messages": MSG}
        for name, method, path, body in [
            ("chat", "POST", CHAT, ok_chat),
            ("stream", "POST", CHAT, {**ok_chat, "stream": True}),
            ("400", "POST", CHAT, {"model": "m"}),
            ("404 model", "POST", CHAT, {"model": "nope", "messages": MSG}),
            ("404 path", "GET", "/no/such/thing", None),
            ("405", "GET", CHAT, None),
            ("health", "GET", "/health", None),
            ("models", "GET", "/v1/models", None),
            ("stats", "GET", "/v1/stats", None),
            ("metrics", "GET", "/metrics", None),
            ("admin", "GET", "/admin/backends", None),
            ("dashboard", "GET", "/", None),
            ("snapshot", "GET", "/dashboard.json", None),
        ]:
            status, headers, _ = await call(method, nexus.url + path, json=body)
            assert status < 500, (name, status)
            seen[name] = headers
        fake.chat = Chat.GZIP_BOMB_500
        fake.bomb_bytes = 8 * MB
        status, seen["502"], _ = await call("POST", nexus.url + CHAT, json=ok_chat)
        assert status == 502
        missing = [
            name
            for name, headers in seen.items()
            if headers.get("X-Content-Type-Options") != "nosniff"
        ]
        assert missing == []
        csp = seen["dashboard"].get("Content-Security-Policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert seen["dashboard"]["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz"]
)
async def test_api_bodies_a_form_can_send_get_415(tmp_path: Path, ctype: str) -> None:
    async with behind_nexus(tmp_path) as (nexus, fake):
        body = orjson.dumps({"model": "m", "messages": MSG})
        status, _, raw = await call(
            "POST", nexus.url + CHAT, data=body, headers={"Content-Type": ctype}
        )
        assert status == 415, raw[:300]
        error = error_of(raw)
        assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
        assert fake.chat_requests == []


async def test_api_body_without_content_type_is_still_accepted(tmp_path: Path) -> None:
    async with behind_nexus(tmp_path) as (nexus, _):
        body = orjson.dumps({"model": "m", "messages": MSG})
        request = (
            f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        reply = await raw_exchange(port_of(nexus), request)
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), reply[:300]
        assert orjson.loads(payload)["choices"][0]["message"]["content"]


# -- 4. decompression bombs -----------------------------------------------------------------


async def test_gzip_bomb_answer_is_a_502_without_the_memory(tmp_path: Path) -> None:
    gzip_bomb(BOMB)  # built before measuring
    async with behind_nexus(tmp_path) as (nexus, fake):
        fake.chat, fake.bomb_bytes = Chat.GZIP_BOMB, BOMB
        with PeakRSS() as rss:
            async with asyncio.timeout(30):
                status, _, raw = await call(
                    "POST", nexus.url + CHAT, json={"model": "m", "messages": MSG}
                )
        assert status == 502, raw[:300]
        assert error_of(raw)["code"] == "backend_error"
        assert rss.growth < BOMB_GROWTH_LIMIT, f"RSS grew by {rss.growth // MB} MiB"


async def test_gzip_bomb_error_body_is_a_502_without_the_memory(tmp_path: Path) -> None:
    gzip_bomb(BOMB)
    async with behind_nexus(tmp_path) as (nexus, fake):
        fake.chat, fake.bomb_bytes = Chat.GZIP_BOMB_500, BOMB
        with PeakRSS() as rss:
            async with asyncio.timeout(30):
                status, _, raw = await call(
                    "POST", nexus.url + CHAT, json={"model": "m", "messages": MSG}
                )
        assert status == 502, raw[:300]
        error = error_of(raw)
        assert error["code"] == "backend_error" and "500" in error["message"]
        assert rss.growth < BOMB_GROWTH_LIMIT, f"RSS grew by {rss.growth // MB} MiB"


async def test_gzip_bomb_probe_makes_the_backend_unhealthy_without_the_memory(
    tmp_path: Path,
) -> None:
    gzip_bomb(BOMB)
    async with running_nexus(tmp_path, []) as nexus, HostileBackend() as fake:
        fake.probe, fake.bomb_bytes = Probe.GZIP_BOMB, BOMB
        with PeakRSS() as rss:
            async with asyncio.timeout(30):
                status, raw = await admin_add(
                    nexus, {"url": fake.url, "name": "bomb", "type": "vllm"}
                )
        assert status == 201, raw[:300]
        backend = nexus.state.registry.find("bomb")
        assert backend is not None and backend.status is BackendStatus.UNHEALTHY
        assert rss.growth < BOMB_GROWTH_LIMIT, f"RSS grew by {rss.growth // MB} MiB"
        assert backend.last_error and "larger than" in backend.last_error, backend.last_error


# -- 5. stream bombs: an event that never ends ----------------------------------------------


async def test_endless_stream_event_ends_the_stream_with_an_error_event(tmp_path: Path) -> None:
    async with behind_nexus(tmp_path) as (nexus, fake):
        fake.chat, fake.giant_bytes = Chat.GIANT_EVENT, GIANT
        with PeakRSS() as rss:
            status, _, events = await sse_events(nexus, timeout=30)
        assert status == 200
        assert len(events) == 3 and events[2] == b"[DONE]", [e[:100] for e in events]
        first = orjson.loads(events[0])
        assert first["choices"][0]["delta"]["content"] == "Hello"
        error = error_of(events[1])
        assert error["code"] == "backend_error"
        assert "event larger than" in error["message"], error
        assert fake.giant_sent < GIANT  # Nexus hung up instead of reading it all
        assert rss.growth < STREAM_GROWTH_LIMIT, f"RSS grew by {rss.growth // MB} MiB"


@pytest.mark.timeout(90)
async def test_health_answers_fast_while_endless_events_stream(tmp_path: Path) -> None:
    async with behind_nexus(tmp_path) as (nexus, fake):
        fake.chat, fake.giant_bytes = Chat.GIANT_EVENT, GIANT
        streams = 0
        running = True

        async def hostile_streams() -> None:
            nonlocal streams
            while running:
                await sse_events(nexus, timeout=60)
                streams += 1

        load = asyncio.create_task(hostile_streams())
        latencies: list[float] = []
        try:
            await wait_until(lambda: fake.giant_sent > 0, timeout=10, what="a giant event sent")
            async with aiohttp.ClientSession() as session:

                async def timed() -> float:
                    started = time.perf_counter()
                    async with session.get(nexus.url + "/health") as resp:
                        assert resp.status == 200
                        await resp.read()
                    return time.perf_counter() - started

                for _ in range(5):
                    # five /health calls at once, while hostile streams are being relayed
                    latencies += await asyncio.gather(*(timed() for _ in range(5)))
                    await asyncio.sleep(0.02)
        finally:
            running = False
            async with asyncio.timeout(60):
                await load
        assert streams >= 1
        assert fake.giant_sent < GIANT  # each hostile stream was cut, not read to its end
        median = statistics.median(latencies)
        assert median < 0.1, f"/health median {median * 1000:.0f} ms over {len(latencies)} calls"


# -- 6. redirects -------------------------------------------------------------------------


async def test_probe_redirect_to_an_internal_service_is_not_followed(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("internal-secret-model")]) as internal, HostileBackend() as fake:
        fake.probe, fake.redirect_to = Probe.REDIRECT, internal.url + "/v1/models"
        async with running_nexus(
            tmp_path, [{"name": "h", "url": fake.url, "type": "vllm"}]
        ) as nexus:
            status, listing, _ = await nexus.get("/v1/models")
            assert status == 200
            assert "internal-secret-model" not in orjson.dumps(listing).decode()
            backend = nexus.state.registry.find("h")
            assert backend is not None and backend.status is BackendStatus.UNHEALTHY
            assert backend.last_error and "302" in backend.last_error, backend.last_error
        assert internal.requests == []


async def test_chat_redirect_is_a_backend_error(tmp_path: Path) -> None:
    async with FakeVLLM([FakeModel("m")]) as internal:
        async with behind_nexus(tmp_path) as (nexus, fake):
            fake.chat, fake.redirect_to = Chat.REDIRECT, internal.url + CHAT
            status, _, raw = await call(
                "POST", nexus.url + CHAT, json={"model": "m", "messages": MSG}
            )
            assert status == 502, raw[:300]
            error = error_of(raw)
            assert error["code"] == "backend_error" and "302" in error["message"]
        assert internal.chat_requests == []


# -- 7. probes send the backend's key -------------------------------------------------------


async def test_probe_sends_the_backends_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARDENING_BACKEND_KEY", "sk-lab-0123456789")
    async with HostileBackend() as fake:
        fake.key = "sk-lab-0123456789"
        entry = {
            "name": "keyed",
            "url": fake.url,
            "type": "openai",
            "api_key_env": "HARDENING_BACKEND_KEY",
        }
        async with running_nexus(tmp_path, [entry]) as nexus:
            backend = nexus.state.registry.find("keyed")
            assert backend is not None
            assert backend.status is BackendStatus.HEALTHY, backend.last_error
            reply = await nexus.client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
            assert reply.choices[0].message.content
        probes = [r for r in fake.requests if r.path == "/v1/models"]
        assert probes and all(
            r.headers["Authorization"] == "Bearer sk-lab-0123456789" for r in probes
        )


# -- 8. backend names -----------------------------------------------------------------------

BAD_NAMES = ["a\r\nX-Evil: 1", "nul\x00byte", "bell\x07", "tab\tname", "x" * 65]


@pytest.mark.parametrize("name", BAD_NAMES, ids=["crlf", "nul", "bell", "tab", "65 chars"])
async def test_admin_refuses_unsafe_backend_names(tmp_path: Path, name: str) -> None:
    async with behind_nexus(tmp_path) as (nexus, _), FakeVLLM([FakeModel("x")]) as target:
        status, raw = await admin_add(nexus, {"url": target.url, "name": name, "type": "vllm"})
        assert status == 400, raw[:300]
        assert error_of(raw)["param"] == "name"
        assert [b.name for b in nexus.state.registry] == ["h"]
        status, raw = await admin_add(nexus, {"url": target.url, "name": "x" * 64, "type": "vllm"})
        assert status == 201, raw[:300]


@pytest.mark.parametrize("name", BAD_NAMES, ids=["crlf", "nul", "bell", "tab", "65 chars"])
def test_config_file_refuses_unsafe_backend_names(tmp_path: Path, name: str) -> None:
    path = write_config(tmp_path, [{"name": name, "url": "http://127.0.0.1:1", "type": "vllm"}])
    with pytest.raises(config_mod.ConfigError, match=re.escape("backends[0].name")):
        config_mod.load(path, env={})


# -- 9. admin races -------------------------------------------------------------------------


async def test_delete_while_the_add_is_probing_leaves_no_probe_loop(tmp_path: Path) -> None:
    async with (
        running_nexus(tmp_path, [], health_check={"interval_seconds": 0.3}) as nexus,
        HostileBackend() as slow,
    ):
        slow.probe, slow.probe_delay = Probe.SLOW, 1.0
        body = {"url": slow.url, "name": "slowpoke", "type": "vllm"}
        add = asyncio.create_task(admin_add(nexus, body))
        await wait_until(
            lambda: any(r.path == "/v1/models" for r in slow.requests), what="the add's probe"
        )
        status, _, raw = await call("DELETE", nexus.url + "/admin/backends/slowpoke")
        assert status == 200, raw
        async with asyncio.timeout(10):
            add_status, add_raw = await add
        assert add_status != 500, add_raw
        await wait_until(
            lambda: (
                nexus.state.registry.find("slowpoke") is None
                and backend_id("slowpoke") not in nexus.state.health._tasks
            ),
            what="the deleted backend gone, and its probe loop with it",
        )
        # Added again, it is watched: probed now, and again after each interval.
        slow.probe_delay = 0.1
        status, raw = await admin_add(nexus, body)
        assert status == 201, raw
        backend = nexus.state.registry.find("slowpoke")
        assert backend is not None and backend.status is BackendStatus.HEALTHY
        first = backend.last_health_check
        await wait_until(lambda: backend.last_health_check != first, what="a second probe")


async def test_identical_concurrent_adds_one_wins_none_crashes(tmp_path: Path) -> None:
    async with running_nexus(tmp_path, []) as nexus, HostileBackend() as slow:
        slow.probe, slow.probe_delay = Probe.SLOW, 0.5
        body = {"url": slow.url, "name": "twin"}  # no type: detected by (slow) probing
        async with asyncio.timeout(20):
            results = await asyncio.gather(admin_add(nexus, body), admin_add(nexus, body))
        statuses = sorted(status for status, _ in results)
        assert statuses == [201, 400], results
        loser = next(raw for status, raw in results if status == 400)
        assert error_of(loser)["code"] == "exists"
        assert [b.name for b in nexus.state.registry] == ["twin"]


# -- 10. metric series of removed backends ----------------------------------------------


@pytest.mark.timeout(120)
async def test_metric_series_of_removed_backends_are_pruned(tmp_path: Path) -> None:
    async with running_nexus(tmp_path, []) as nexus, FakeVLLM([FakeModel("m")]) as fake:
        texts: dict[int, str] = {}
        async with aiohttp.ClientSession() as session:
            for i in range(1, 301):
                name = f"cycle-{i}"
                async with session.post(
                    nexus.url + "/admin/backends",
                    json={"url": fake.url, "name": name, "type": "vllm"},
                ) as r:
                    assert r.status == 201, await r.text()
                async with session.post(
                    nexus.url + CHAT, json={"model": "m", "messages": MSG}
                ) as r:
                    assert r.status == 200, await r.text()
                async with session.delete(nexus.url + f"/admin/backends/{name}") as r:
                    assert r.status == 200
                if i in (30, 300):
                    async with session.get(nexus.url + "/metrics") as r:
                        text = await r.text()
                    texts[i] = text
        sizes = {i: len(text) for i, text in texts.items()}
        assert sizes[300] < sizes[30] * 1.2, sizes
        assert 'backend="cycle-1"' not in texts[300] and 'backend="cycle-299"' not in texts[300]


# -- 11. Expect -----------------------------------------------------------------------------


async def test_expect_100_continue_for_a_body_over_the_limit_gets_413_and_no_continue(
    tmp_path: Path,
) -> None:
    async with behind_nexus(tmp_path, server={"max_request_bytes": 65536}) as (nexus, fake):
        request = (
            f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 65537\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
        reply = await raw_exchange(port_of(nexus), request)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"100 Continue" not in reply
        _, _, payload = reply.partition(b"\r\n\r\n")
        assert error_of(payload)["code"] == "request_too_large"
        assert fake.chat_requests == []


async def test_unknown_expectation_is_answered_in_openai_shape(tmp_path: Path) -> None:
    async with behind_nexus(tmp_path) as (nexus, _):
        body = orjson.dumps({"model": "m", "messages": MSG})
        request = (
            f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 200-ok\r\nConnection: close\r\n\r\n"
        ).encode() + body
        reply = await raw_exchange(port_of(nexus), request)
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head.lower(), head
        data = orjson.loads(payload)
        if head.startswith(b"HTTP/1.1 200"):
            assert data["choices"][0]["message"]["content"]
        else:
            error_of(payload)


# -- 12. backend URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999",
        "http://[::1",
        "http://127.0.0.1:1/\r\nX-Evil: 1",
        "http://127.0.0.1:1/a\nb",
        "http://127.0.0.1:0",
    ],
    ids=["port too big", "unclosed bracket", "crlf", "lf", "port zero"],
)
async def test_admin_refuses_malformed_urls(tmp_path: Path, url: str) -> None:
    async with behind_nexus(tmp_path) as (nexus, _):
        status, raw = await admin_add(nexus, {"url": url, "name": "bad", "type": "vllm"})
        assert status == 400, raw[:300]
        assert error_of(raw)["param"] == "url"
        assert [b.name for b in nexus.state.registry] == ["h"]


async def test_url_password_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(1, logger="nexus")
    secret = "pw-HARDENING-s3cret"
    async with (
        running_nexus(tmp_path, [], logging={"level": "trace"}) as nexus,
        HostileBackend() as fake,
    ):
        url = fake.url.replace("http://", f"http://lab-user:{secret}@")
        status, raw = await admin_add(nexus, {"url": url, "name": "creds", "type": "vllm"})
        assert status == 201, raw
        assert nexus.state.registry.find("creds").status is BackendStatus.HEALTHY  # type: ignore[union-attr]
        reply = await nexus.client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
        assert reply.choices[0].message.content
        shown = [raw]
        for path in (
            "/admin/backends",
            "/v1/models",
            "/metrics",
            "/dashboard.json",
            "/",
            "/v1/stats",
            "/health",
        ):
            status, headers, body = await call("GET", nexus.url + path)
            assert status == 200, path
            shown.append(body + str(dict(headers)).encode())
        assert b"creds" in shown[1] and b'"id":"m"' in shown[2]
        status, _, body = await call("DELETE", nexus.url + "/admin/backends/creds")
        shown.append(body)
    logs = "\n".join(r.getMessage() + str(getattr(r, "fields", "")) for r in caplog.records)
    assert "creds" in logs  # the log really was captured
    everything = b"\n".join(shown).decode(errors="replace") + logs
    assert secret not in everything
    assert "lab-user" not in everything


# -- 13. stream edge cases -------------------------------------------------------------------


async def test_last_event_without_a_blank_line_is_relayed(tmp_path: Path) -> None:
    async with behind_nexus(tmp_path) as (nexus, fake):
        fake.chat = Chat.DONE_UNTERMINATED
        status, _, events = await sse_events(nexus)
        assert status == 200
        assert events[-1] == b"[DONE]", events
        assert orjson.loads(events[0])["choices"][0]["delta"]["content"] == "Hello"
        assert not any(e.startswith(b'{"error"') for e in events)


async def test_non_json_event_ends_the_stream_with_an_error_event(tmp_path: Path) -> None:
    async with behind_nexus(tmp_path) as (nexus, fake):
        fake.chat = Chat.NON_JSON_EVENT
        status, _, events = await sse_events(nexus)
        assert status == 200
        assert orjson.loads(events[0])["choices"][0]["delta"]["content"] == "Hello"
        assert b"not JSON" not in b"".join(events[:-2])  # only our error event names it
        error = error_of(events[-2])
        assert error["code"] == "backend_error" and "not JSON" in error["message"]
        assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1


async def test_stream_without_done_ends_with_an_error_event(tmp_path: Path) -> None:
    async with behind_nexus(tmp_path) as (nexus, fake):
        fake.chat = Chat.NO_DONE
        status, _, events = await sse_events(nexus)
        assert status == 200
        assert [orjson.loads(e)["choices"][0]["delta"]["content"] for e in events[:2]] == [
            "Hello",
            " world",
        ]
        error = error_of(events[-2])
        assert error["code"] == "backend_error" and "[DONE]" in error["message"]
        assert len(events) == 4 and events[-1] == b"[DONE]"  # ours, after the error


async def test_a_listing_with_unusable_model_ids_keeps_only_the_usable_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Model ids go into headers, log lines and metric labels: a backend listing ids with
    CR/LF or of absurd length gets only its usable ones served (and a warning)."""
    injected = "evil\r\nX-Injected: 1"
    models = [FakeModel("good"), FakeModel(injected), FakeModel("m" * 300)]
    async with FakeVLLM(models) as fake:
        entry = {"name": "box", "url": fake.url, "type": "vllm"}
        async with running_nexus(tmp_path, [entry]) as nexus:
            _, listing, _ = await nexus.get("/v1/models")
            assert [m["id"] for m in listing["data"]] == ["good"]
            reply = await nexus.client.chat.completions.create(
                model="good", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
    assert any("2 with unusable ids" in r.getMessage() for r in caplog.records)
