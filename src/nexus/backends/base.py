"""The adapter protocol: how Nexus learns what a backend serves.

One adapter per backend family. All of them speak OpenAI's ``/v1/chat/completions`` and
``/v1/embeddings`` for traffic; they differ in how they are probed and in what their model
listings reveal (context length, capabilities). A probe returns the models or raises
:class:`ProbeError` with a reason a person can act on.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Protocol

import aiohttp
import orjson

from nexus.registry import Backend, Model


class ProbeError(Exception):
    """A probe failed; ``str(exc)`` names why (DNS, refused, TLS, timeout, HTTP status...)."""


class Adapter(Protocol):
    async def probe(self, session: aiohttp.ClientSession, backend: Backend) -> list[Model]:
        """Ask the backend what it serves. Raises ProbeError when it is not usable."""
        ...


def describe_client_error(exc: BaseException) -> str:
    """A short, specific reason for a failed upstream call (never contains request data)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS resolution failed for {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return f"TLS error: {_reason(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ssl.SSLError):
            return f"TLS error: {_reason(exc.os_error)}"
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"connection refused by {exc.host}:{exc.port}"
        return f"cannot connect to {exc.host}:{exc.port}: {_reason(exc.os_error)}"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "backend closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "backend sent a truncated or malformed body"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    return f"{type(exc).__name__}: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc) or type(exc).__name__
    return text[:200]


async def fetch_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = None,
    allow_404: bool = False,
) -> Any:
    """GET/POST ``url`` and parse its JSON. Returns None on 404 when ``allow_404``.

    Any transport failure, non-2xx status or unparseable body becomes ProbeError (a backend
    that answers 200 with garbage is not healthy); a timeout stays a TimeoutError.
    """
    data = None if body is None else orjson.dumps(body)
    headers = {"Content-Type": "application/json"} if data is not None else None
    try:
        async with session.request(method, url, data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.status == 404 and allow_404:
                return None
            if resp.status >= 400:
                raise ProbeError(f"{method} {_path(url)} answered HTTP {resp.status}")
    except (ProbeError, TimeoutError):
        raise  # the health checker words timeouts itself (and knows when one is expected)
    except (aiohttp.ClientError, OSError) as exc:
        raise ProbeError(describe_client_error(exc)) from exc
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise ProbeError(f"{method} {_path(url)} answered invalid JSON") from None


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3] if url.count("/") >= 3 else url


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, float) and value > 0:
        return int(value)
    return None


def require_list(payload: Any, key: str, what: str) -> list[Any]:
    items = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise ProbeError(f"{what}: unexpected response (no {key!r} list)")
    return items
