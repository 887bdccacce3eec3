"""The pipeline against a transport double: failover decisions without sockets.

The app is built by ``build_app`` from a config, as ``nexus serve`` builds it; only the
forwarder's transport (the ``nexus.transport.Transport`` seam) is a double that answers
from a script, so each decision can be checked on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from nexus import config as config_mod
from nexus.app import App, build_app
from nexus.registry import BackendStatus, Model
from nexus.transport import TLS, Disconnected
from tests.helpers import write_config

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
OK = orjson.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
)


class ScriptedAnswer:
    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = dict(headers)
        self.released = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0]

    async def read(
        self, seconds: float | None, limit: int | None = None, *, truncate: bool = False
    ) -> bytes:
        return self.body if limit is None else self.body[:limit]

    async def read_chunk(self, seconds: float | None) -> bytes:
        body, self.body = self.body, b""
        return body

    def release(self) -> None:
        self.released = True


class ScriptedTransport:
    """Answers by backend URL: an exception to raise or (status, body, headers)."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.answers: list[ScriptedAnswer] = []

    async def request(
        self,
        url: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        tls: TLS | None = None,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> ScriptedAnswer:
        self.calls.append((url, headers))
        step = self.script[url]
        if isinstance(step, BaseException):
            raise step
        answer = ScriptedAnswer(*step)
        self.answers.append(answer)
        return answer

    def close(self) -> None:
        pass


def app_with(tmp_path: Path, script: dict[str, Any]) -> tuple[App, ScriptedTransport]:
    backends = [
        {"name": n, "url": f"http://{n}.test", "type": "vllm", "priority": i}
        for i, n in enumerate("ab")
    ]
    app = build_app(config_mod.load(write_config(tmp_path, backends), env={}))
    for backend in app.state.registry:
        app.state.registry.update_models(backend.id, [Model(id="m")])
        backend.status = BackendStatus.HEALTHY
    double = ScriptedTransport(script)
    app.pipeline.forwarder.transport = double
    return app, double


async def call(app: App, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    raw = orjson.dumps(body)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"authorization", b"Bearer c")],
        "client": ("127.0.0.1", 1),
        "scheme": "http",
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    app.state.recorder.flush()
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "failure",
    [
        Disconnected("backend closed the connection before answering", answered=False),
        (500, b'{"error": {"message": "boom"}}', JSON),
        (302, b"{}", {"location": "http://x"}),
        (200, b"{not json", JSON),
    ],
    ids=["refused", "500", "redirect", "invalid-json"],
)
async def test_a_failed_backend_is_penalised_and_the_next_one_answers(
    tmp_path: Path, failure: Any
) -> None:
    app, double = app_with(tmp_path, {"http://a.test": failure, "http://b.test": (200, OK, JSON)})
    status, headers, body = await call(app, CHAT)
    assert (status, headers["x-nexus-backend"], body["choices"][0]["message"]["content"]) == (
        200,
        "b",
        "ok",
    )
    assert [url for url, _ in double.calls] == ["http://a.test", "http://b.test"]
    a = app.state.registry.find("a")
    assert a is not None and a.failed_requests == 1 and a.penalized_until > 0
    assert all(answer.released for answer in double.answers)
    assert {b.name: b.pending_requests for b in app.state.registry} == {"a": 0, "b": 0}


async def test_html_from_a_backend_4xx_becomes_json(tmp_path: Path) -> None:
    page = b"<html><script>steal()</script>Forbidden</html>"
    app, _ = app_with(
        tmp_path,
        {
            "http://a.test": (403, page, {"content-type": "text/html"}),
            "http://b.test": (200, OK, JSON),
        },
    )
    status, headers, body = await call(app, CHAT)
    assert status == 403 and headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert "answered HTTP 403" in body["error"]["message"]


async def test_429_is_kept_while_another_backend_can_serve(tmp_path: Path) -> None:
    limited = (429, b'{"error": {"message": "slow down"}}', {**JSON, "retry-after": "7"})
    app, _ = app_with(tmp_path, {"http://a.test": limited, "http://b.test": limited})
    status, headers, _ = await call(app, CHAT)
    assert status == 429 and headers["retry-after"] == "7"
    app, _ = app_with(tmp_path, {"http://a.test": limited, "http://b.test": (200, OK, JSON)})
    status, headers, _ = await call(app, CHAT)
    assert status == 200 and headers["x-nexus-backend"] == "b"


async def test_client_credentials_go_to_configured_backends_only(tmp_path: Path) -> None:
    app, double = app_with(tmp_path, {"http://a.test": (200, OK, JSON)})
    await call(app, CHAT)
    assert double.calls[0][1]["Authorization"] == "Bearer c"
