"""The fleet's HTTP to backends (nexus.fleet.http): every way an exchange can fail becomes
one kind of reason, ``<backend>: <request>: <why>``, against a real FakeOllama misbehaving
on 127.0.0.1 (and a port nothing listens on)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from nexus.fleet.errors import OperationFailed
from nexus.fleet.http import BackendHTTP, error_message
from nexus.registry import Backend
from nexus.transport import Pool
from tests.fakes import Behavior, FakeModel, FakeOllama

SECONDS = 0.3  # the limit that runs out, where the backend is made to stay silent
PATIENT = 30.0  # the limit where it fails otherwise: ample on a busy machine


@pytest.fixture
async def box() -> AsyncIterator[FakeOllama]:
    async with FakeOllama([FakeModel("llama3:8b")], pullable={"mistral:7b": 2**30}) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[BackendHTTP]:
    pool = Pool(2, 5)
    try:
        yield BackendHTTP(pool)
    finally:
        pool.close()


async def call_reason(
    http: BackendHTTP, url: str, method: str, path: str, body: Any, seconds: float = PATIENT
) -> str:
    with pytest.raises(OperationFailed) as failed:
        await http.call(
            Backend(name="box", url=url, type="ollama"), method, path, body, seconds=seconds
        )
    return str(failed.value)


async def pull_reason(http: BackendHTTP, url: str, stall: float = PATIENT) -> str:
    backend = Backend(name="box", url=url, type="ollama")
    lines = http.lines(backend, "POST", "/api/pull", {"model": "mistral:7b"}, stall=stall)
    with pytest.raises(OperationFailed) as failed:
        async with aclosing(lines):
            async for _ in lines:
                pass
    return str(failed.value)


async def test_a_call_that_fails_says_which_backend_which_request_and_why(
    box: FakeOllama, http: BackendHTTP
) -> None:
    refused = await call_reason(http, "http://127.0.0.1:9", "GET", "/api/ps", None)
    assert refused.startswith("box: GET /api/ps: ") and "refused" in refused, refused

    box.health_behavior = Behavior.HANG
    silent = await call_reason(http, box.url, "GET", "/api/ps", None, SECONDS)
    assert silent == f"box: GET /api/ps: no answer within {SECONDS:g} s"

    box.chat_behavior = Behavior.TRUNCATED
    body = {"model": "llama3:8b", "prompt": "hi", "stream": False}
    cut = await call_reason(http, box.url, "POST", "/api/generate", body)
    assert cut == "box: POST /api/generate: backend closed the connection mid-body"

    box.chat_behavior, box.error_message = Behavior.ERROR_500, "out of\nmemory"
    error = await call_reason(http, box.url, "POST", "/api/generate", body)
    assert error == "box: POST /api/generate answered HTTP 500: out of memory"


async def test_a_stream_that_fails_says_which_backend_which_request_and_why(
    box: FakeOllama, http: BackendHTTP
) -> None:
    box.pull_behavior = Behavior.HANG
    silent = await pull_reason(http, box.url, SECONDS)
    assert silent == f"box: POST /api/pull: no answer within {SECONDS:g} s"

    box.pull_behavior, box.cut_after = Behavior.STALL_STREAM, 2
    stalled = await pull_reason(http, box.url, SECONDS)
    assert stalled == f"box: POST /api/pull: sent nothing for {SECONDS:g} s"

    box.pull_behavior = Behavior.CUT_STREAM
    cut = await pull_reason(http, box.url)
    assert cut == "box: POST /api/pull: backend closed the connection mid-body"

    refused = await pull_reason(http, "http://127.0.0.1:9")
    assert refused.startswith("box: POST /api/pull: ") and "refused" in refused, refused


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"error": "pull model manifest: file does not exist"},
            "pull model manifest: file does not exist",
        ),
        (
            {"error": {"message": "model not found", "type": "invalid_request_error"}},
            "model not found",
        ),
        ({"detail": "Not Found"}, "Not Found"),
        ({"error": "a\x00b\tc "}, "a b c"),
        ({"error": "x" * 5000}, "x" * 300),
        ({"error": 42}, ""),
        ({"status": "success"}, ""),
        (["error"], ""),
        (None, ""),
    ],
)
def test_the_error_a_backend_sent_is_found_in_each_shape(payload: Any, message: str) -> None:
    assert error_message(payload) == message
