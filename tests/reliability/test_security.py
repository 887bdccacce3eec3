"""No secrets anywhere; the admin API is loopback-only unless a token is set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from nexus.app import App
from nexus.errors import Forbidden
from nexus.tenants.service import presented_key
from tests.fakes import Behavior, FakeModel, FakeVLLM
from tests.helpers import backend_entry, running_nexus

CLIENT_KEY = "sk-client-key-0123456789"
BACKEND_KEY = "sk-backend-key-9876543210"
CONTENT = "PRIVATE-CONVERSATION-CONTENT"


async def test_no_secret_or_content_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(1, logger="nexus")
    monkeypatch.setenv("LAB_KEY", BACKEND_KEY)
    async with FakeVLLM([FakeModel("m")]) as keyed, FakeVLLM([FakeModel("m")]) as plain:
        backends = [
            backend_entry(
                keyed, "keyed", "generic", api_key_env="LAB_KEY"
            ),  # a local box with a key
            backend_entry(plain, "plain", "vllm"),
        ]
        async with running_nexus(tmp_path, backends, logging={"level": "trace"}) as nexus:
            headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
            seen: list[str] = []
            async with aiohttp.ClientSession(headers=headers) as s:
                for stream in (False, True):
                    body = {
                        "model": "m",
                        "stream": stream,
                        "messages": [{"role": "user", "content": CONTENT}],
                    }
                    for _ in range(2):
                        async with s.post(nexus.url + "/v1/chat/completions", json=body) as r:
                            assert r.status == 200
                            seen.append(str(dict(r.headers)))
                keyed.chat_behavior = plain.chat_behavior = Behavior.ERROR_500
                async with s.post(nexus.url + "/v1/chat/completions", json=body) as r:
                    seen.append(await r.text() + str(dict(r.headers)))
                async with s.post(
                    nexus.url + "/v1/chat/completions", json={"model": CONTENT, "messages": []}
                ) as r:
                    seen.append(await r.text())
                for path in (
                    "/metrics",
                    "/v1/stats",
                    "/health",
                    "/v1/models",
                    "/admin/backends",
                    "/",
                ):
                    async with s.get(nexus.url + path) as r:
                        seen.append(await r.text() + str(dict(r.headers)))
            # The backend with a key got its key, not the client's; the other got the client's.
            assert keyed.chat_requests[0].headers["Authorization"] == f"Bearer {BACKEND_KEY}"
            assert plain.chat_requests[0].headers["Authorization"] == f"Bearer {CLIENT_KEY}"
    logs = "\n".join(r.getMessage() + str(getattr(r, "fields", "")) for r in caplog.records)
    assert "nexus.request" in {r.name for r in caplog.records}  # the log was really captured
    everything = logs + "\n".join(seen)
    for secret in (CLIENT_KEY, BACKEND_KEY, CONTENT):
        assert secret not in everything, secret
    assert (
        "Traceback" not in everything
        and "aiohttp/" not in everything
        and "Python/" not in everything
    )


async def test_admin_token_required_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", "tok-123")
    async with running_nexus(tmp_path, []) as nexus:
        async with aiohttp.ClientSession() as s:
            async with s.get(nexus.url + "/admin/backends") as r:
                assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden"
            async with s.get(
                nexus.url + "/admin/backends", headers={"Authorization": "Bearer nope"}
            ) as r:
                assert r.status == 403
            async with s.get(
                nexus.url + "/admin/backends", headers={"Authorization": "Bearer tok-123"}
            ) as r:
                assert r.status == 200
            async with s.post(
                nexus.url + "/admin/backends", json={"url": "http://127.0.0.1:1"}
            ) as r:
                assert r.status == 403


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("127.9.9.9", True),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("fe80::1", False),
    ],
)
async def test_admin_is_loopback_only_without_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peer: str, allowed: bool
) -> None:
    # Tests only ever talk over loopback, so a LAN peer is simulated: the request is handed,
    # with that peer address, to the ASGI app `nexus serve` builds, as uvicorn would.
    monkeypatch.delenv("NEXUS_ADMIN_TOKEN", raising=False)

    async with running_nexus(tmp_path, []) as nexus:
        app = nexus.server.app

        async def routed(method: str, path: str) -> tuple[int, dict[str, Any]]:
            sent = await from_peer(app, (peer, 1234), path, method=method)
            return sent[0]["status"], json.loads(sent[1]["body"])

        if allowed:
            status, _ = await routed("GET", "/admin/backends")
            assert status == 200
        else:
            for method, path in (
                ("GET", "/admin/backends"),
                ("POST", "/admin/backends"),
                ("DELETE", "/admin/backends/anything"),
            ):
                status, body = await routed(method, path)
                assert status == Forbidden.status and body["error"]["code"] == "forbidden"


async def test_admin_add_only_accepts_http_urls(tmp_path: Path) -> None:
    async with running_nexus(tmp_path, []) as nexus:
        for url in ("file:///etc/passwd", "ftp://x", "gopher://x", "javascript:alert(1)", "//x", 5):
            status, body, _ = await nexus.post("/admin/backends", {"url": url})
            assert status == 400 and body["error"]["param"] == "url"
        assert len(nexus.state.registry) == 0


async def test_backend_cookies_are_not_replayed_to_other_clients(tmp_path: Path) -> None:
    seen: list[str | None] = []

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "c", "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "model": "c",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )
        response.set_cookie("session", "client-a-secret")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        # A host name, not an IP: a client with a cookie jar (aiohttp's default) keeps
        # cookies for it.
        url = f"http://localhost:{runner.addresses[0][1]}"
        async with running_nexus(tmp_path, [{"name": "c", "url": url, "type": "generic"}]) as nexus:
            for _ in range(2):
                status, _, _ = await nexus.post(
                    "/v1/chat/completions",
                    {"model": "c", "messages": [{"role": "user", "content": "x"}]},
                )
                assert status == 200
        assert seen == [None, None]
    finally:
        await runner.cleanup()


# -- the admin token: one reading of it everywhere, and any token works --------------------------

LAN_PEER = ("192.168.1.20", 52000)


def auth_on(tmp_path: Path) -> dict[str, Any]:
    """[auth] on: the dashboard and /v1/stats then answer loopback and the token only."""
    return {"auth": {"enabled": True}, "storage": {"path": str(tmp_path / "nexus.db")}}


async def from_peer(
    app: App,
    peer: tuple[str, int],
    path: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
    method: str = "GET",
) -> list[dict[str, Any]]:
    """A request from ``peer``, handed with that address to the app `nexus serve` builds, as
    uvicorn would (tests only ever connect over loopback); the messages it sent back."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(b"host", b"127.0.0.1:8000"), *(headers or [])],
        "client": peer,
        "scheme": "http",
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def from_lan(
    app: App, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b""
) -> tuple[int, dict[bytes, bytes]]:
    """A GET from a LAN peer (the dashboard trusts loopback): status and headers."""
    sent = await from_peer(app, LAN_PEER, path, headers, query)
    return sent[0]["status"], dict(sent[0].get("headers", []))


ODD_TOKEN = 'sésame-🔑 "ouvre;toi", %41+\\'  # beyond latin-1, and what a cookie cannot hold


async def test_any_admin_token_logs_the_dashboard_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", ODD_TOKEN)
    async with running_nexus(tmp_path, [], **auth_on(tmp_path)) as nexus:
        # A browser sends what is typed in the URL bar percent-encoded, as UTF-8.
        login = URL(nexus.url + "/?token=" + quote(ODD_TOKEN, safe=""), encoded=True)
        async with (
            aiohttp.ClientSession() as session,
            session.get(login, allow_redirects=False) as resp,
        ):
            assert resp.status == 303 and resp.headers["location"] == "/"
            set_cookie = resp.headers["set-cookie"]
        pair, *attributes = [p.strip() for p in set_cookie.split(";")]
        assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
        assert pair.startswith("nexus_admin=") and pair.isascii()
        assert not {" ", '"', ",", ";", "\\"} & set(pair)  # what a cookie may hold
        cookie = [(b"cookie", b"theme=dark; " + pair.encode())]
        app = nexus.server.app
        for path in ("/", "/dashboard.json", "/v1/stats"):
            assert (await from_lan(app, path, cookie))[0] == 200, path
            assert (await from_lan(app, path, []))[0] == 403, path
            wrong = [(b"cookie", pair.encode()[:-1])]
            assert (await from_lan(app, path, wrong))[0] == 403, path
        # Its characters beyond ASCII sent as raw UTF-8 bytes (as curl sends what it is
        # given): the same token, in the query and in a header.
        word = "sésame-🔑"
        query = b"token=" + word.encode() + quote(ODD_TOKEN.removeprefix(word), safe="").encode()
        status, headers = await from_lan(app, "/", [], query=query)
        assert status == 303 and headers[b"set-cookie"].startswith(pair.encode() + b";")
        bearer = [(b"authorization", b"Bearer " + ODD_TOKEN.encode())]
        assert (await from_lan(app, "/v1/stats", bearer))[0] == 200
        assert (await from_lan(app, "/admin/backends", bearer))[0] == 200
        assert (await from_lan(app, "/admin/backends", cookie))[0] == 403  # (bearer only)
        assert (await from_lan(app, "/", [], query=b"token=wrong"))[0] == 403


async def test_a_latin1_token_still_works_as_python_sends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # http.client (urllib, so `nexus backends --url`) sends a header's text as latin-1.
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", "sésame")
    async with running_nexus(tmp_path, [], **auth_on(tmp_path)) as nexus:
        for sent in ("sésame".encode("latin-1"), "sésame".encode()):
            bearer = [(b"authorization", b"Bearer " + sent)]
            for path in ("/v1/stats", "/admin/backends"):
                assert (await from_lan(nexus.server.app, path, bearer))[0] == 200, (sent, path)
        wrong = [(b"authorization", b"Bearer sesame")]
        assert (await from_lan(nexus.server.app, "/admin/backends", wrong))[0] == 403


ADMIN_TOKEN = "tok-0123456789abcdef"


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        (f"Bearer {ADMIN_TOKEN}", True),
        (f"bearer {ADMIN_TOKEN}", True),
        (f"BEARER    {ADMIN_TOKEN}  ", True),
        (ADMIN_TOKEN, False),  # no scheme
        (f"Basic {ADMIN_TOKEN}", False),
        (f"Bearer\t{ADMIN_TOKEN}", False),
        (f"Bearer {ADMIN_TOKEN}x", False),
        ("Bearer ", False),
        ("Bearer", False),
    ],
)
async def test_a_bearer_token_reads_the_same_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authorization: str, accepted: bool
) -> None:
    """The admin API, the dashboard's gate and tenants' keys read ``Authorization`` alike."""
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", ADMIN_TOKEN)
    headers = [(b"authorization", authorization.encode())]
    async with running_nexus(tmp_path, [], **auth_on(tmp_path)) as nexus:
        for path in ("/admin/backends", "/v1/stats"):
            status, _ = await from_lan(nexus.server.app, path, headers)
            assert status == (200 if accepted else 403), path
    key = presented_key({"type": "http", "headers": headers})
    assert (key == ADMIN_TOKEN) is accepted


async def test_an_admin_body_must_be_a_json_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEXUS_ADMIN_TOKEN", raising=False)
    async with running_nexus(tmp_path, []) as nexus:
        for body in (b"[]", b"5", b'"http://127.0.0.1:1"', b"null", b"{", b""):
            status, answer, _ = await nexus.post(
                "/admin/backends", data=body, headers={"Content-Type": "application/json"}
            )
            assert status == 400, body
            assert answer["error"]["message"] == "body must be a JSON object", body
        assert len(nexus.state.registry) == 0
