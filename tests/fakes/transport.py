"""A transport double (the ``nexus.transport.Transport`` seam): answers from a script,
records what each backend was sent. With ``call``, the app built by ``build_app`` serves one
request in-process, without sockets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from nexus.app import App
from nexus.transport import TLS


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

    def whole(self) -> bytes | None:
        # As Response does for a body that came with its head: all of it, once.
        body, self.body = self.body, b""
        return body

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
        self.bodies: list[bytes | None] = []
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
        self.bodies.append(body)
        step = self.script[url]
        if isinstance(step, BaseException):
            raise step
        answer = ScriptedAnswer(*step)
        self.answers.append(answer)
        return answer

    def close(self) -> None:
        pass


async def call(
    app: App, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[int, dict[str, str], Any]:
    """One chat request through the app as uvicorn would hand it over."""
    raw = orjson.dumps(body)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer c"),
            *headers,
        ],
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
