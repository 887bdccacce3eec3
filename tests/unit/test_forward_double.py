"""The pipeline against a transport double: failover decisions without sockets.

The app is built by ``build_app`` from a config, as ``nexus serve`` builds it; only the
forwarder's transport (the ``nexus.transport.Transport`` seam) is a double that answers
from a script, so each decision can be checked on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from nexus import config as config_mod
from nexus.app import App, build_app
from nexus.registry import BackendStatus, Model
from nexus.transport import Disconnected
from tests.fakes.transport import ScriptedTransport, call
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
