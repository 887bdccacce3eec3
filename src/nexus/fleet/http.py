"""JSON and NDJSON to a backend's management API, for lifecycle operations.

These are not probes: a load blocks until the model is in memory (minutes on a slow disk)
and a pull streams progress for as long as the download takes, so each call names its own
time limit and a stream is read line by line, where ``ProbeClient`` has one short probe
timeout. Like probes they send the backend's key exactly as traffic does, follow no redirect
and bound what they read. Every failure becomes ``OperationFailed`` with a reason a person
can act on, ``<backend>: <request>: <why>`` (``failures``); a backend's own error text is
quoted short and printable (``error_message``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from nexus.backends import auth
from nexus.errors import printable
from nexus.fleet.errors import OperationFailed
from nexus.registry import Backend
from nexus.transport import Answer, ConnectTimeout, Transport, UpstreamError, describe

MAX_ANSWER = 16 * 1024 * 1024  # a model listing or a status, read whole
MAX_LINE = 64 * 1024  # one progress line of a pull
MAX_QUOTED = 300  # characters of a backend's own error message kept in a reason


class BackendHTTP:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def call(
        self, backend: Backend, method: str, path: str, body: Any = None, *, seconds: float
    ) -> Any:
        """``METHOD path`` with a JSON body; the parsed answer (None for an empty one)."""
        what = f"{method} {path}"
        with failures(backend, what, f"no answer within {seconds:g} s"):
            async with asyncio.timeout(seconds):
                answer = await self._send(backend, method, path, body, seconds)
                try:
                    raw = await answer.read(seconds, MAX_ANSWER)
                finally:
                    answer.release()
        if answer.status >= 300:
            raise failure(backend, what, answer.status, raw)
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise OperationFailed(f"{backend.name}: {what} answered invalid JSON") from None

    async def lines(
        self, backend: Backend, method: str, path: str, body: Any, *, stall: float
    ) -> AsyncGenerator[Any, None]:
        """The JSON objects of an NDJSON answer as they arrive; ``OperationFailed`` when
        nothing arrives for ``stall`` seconds (there is no cap on the whole stream)."""
        what = f"{method} {path}"
        with failures(backend, what, f"no answer within {stall:g} s"):
            answer = await self._send(backend, method, path, body, stall)
        try:
            if answer.status >= 300:
                raw = await _error_body(backend, what, answer, stall)
                raise failure(backend, what, answer.status, raw)
            async for line in _split(backend, what, answer, stall):
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise OperationFailed(
                        f"{backend.name}: {what} sent a line that is not JSON"
                    ) from None
        finally:
            answer.release()

    async def _send(
        self, backend: Backend, method: str, path: str, body: Any, seconds: float
    ) -> Answer:
        data = None if body is None else orjson.dumps(body)
        headers = auth.headers_for(backend)
        if data is not None:
            headers["Content-Type"] = "application/json"
        return await self.transport.request(
            backend.url, method, path, data, headers, tls=backend.tls, read_timeout=seconds
        )


@contextmanager
def failures(backend: Backend, what: str, silence: str) -> Iterator[None]:
    """A failed exchange (``what``: "POST /api/pull") as ``OperationFailed``:
    ``<backend>: <what>: <why>``, ``silence`` being the why of a time limit that ran out
    waiting for the backend (a connection that could not be made says so itself)."""
    try:
        yield
    except (UpstreamError, OSError) as exc:  # TimeoutError, ConnectTimeout too, is an OSError
        waited = isinstance(exc, TimeoutError) and not isinstance(exc, ConnectTimeout)
        reason = silence if waited else describe(exc)
        raise OperationFailed(f"{backend.name}: {what}: {reason}") from None


async def _error_body(backend: Backend, what: str, answer: Answer, seconds: float) -> bytes:
    """As much of an error answer's body as comes within ``seconds`` (the status alone is
    reason enough when the rest never comes)."""
    with failures(backend, what, ""):  # a time limit running out is caught below
        try:
            return await answer.read(seconds, MAX_ANSWER, truncate=True)
        except TimeoutError:
            return b""


async def _split(backend: Backend, what: str, answer: Answer, stall: float) -> AsyncIterator[bytes]:
    pending = b""
    while True:
        with failures(backend, what, f"sent nothing for {stall:g} s"):
            chunk = await answer.read_chunk(stall)
        if not chunk:
            if pending.strip():
                yield pending
            return
        pending += chunk
        *whole, pending = pending.split(b"\n")
        if len(pending) > MAX_LINE:
            raise OperationFailed(f"{backend.name}: {what} sent a line over {MAX_LINE} bytes")
        for line in whole:
            if line.strip():
                yield line


def failure(backend: Backend, what: str, status: int, raw: bytes) -> OperationFailed:
    """The reason for an error answer: the backend's own message when it sent one."""
    if 300 <= status < 400:
        return OperationFailed(
            f"{backend.name}: {what} answered HTTP {status} (redirects are not followed)", status
        )
    try:
        message = error_message(orjson.loads(raw))
    except orjson.JSONDecodeError:
        message = ""
    suffix = f": {message}" if message else ""
    return OperationFailed(f"{backend.name}: {what} answered HTTP {status}{suffix}", status)


def error_message(payload: Any) -> str:
    """The error a backend sent in an answer or in a line of a stream, short and printable;
    "" when there is none. ``{"error": "..."}`` (Ollama), ``{"error": {"message": ...}}``
    (llama.cpp, OpenAI style) or ``{"detail": ...}`` (FastAPI)."""
    if not isinstance(payload, dict):
        return ""
    error = payload.get("error", payload.get("detail"))
    if isinstance(error, dict):
        error = error.get("message")
    return printable(error, MAX_QUOTED) if isinstance(error, str) else ""
