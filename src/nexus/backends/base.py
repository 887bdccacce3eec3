"""The adapter protocol: how Nexus learns what a backend serves.

One adapter per backend family. Local ones speak OpenAI's API for traffic, cloud ones
their provider's (``nexus.pipeline.outbound`` translates); they differ in how they are
probed and in what their model listings reveal (context length, capabilities). A probe
returns the models or raises :class:`ProbeError` with a reason a person can act on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from nexus.backends import auth
from nexus.registry import Backend, Model
from nexus.transport import TLS, Transport, UpstreamError, describe


class ProbeError(Exception):
    """A probe failed; ``str(exc)`` names why (DNS, refused, TLS, timeout, HTTP status...)."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status  # the backend's HTTP status, when it answered one
        self.body = body[:4096]  # the start of its error body, for callers that read it


@dataclass(slots=True)
class Listing:
    """What a probe learned: the models served, and how many requests the backend says it
    serves at once (llama.cpp's slots), when it says."""

    models: list[Model]
    slots: int | None = None


class Adapter(Protocol):
    async def probe(self, client: ProbeClient, backend: Backend) -> Listing:
        """Ask the backend what it serves. Raises ProbeError when it is not usable."""
        ...


class ProbeClient:
    """How adapters ask a backend things: JSON over the transport, with the backend's key
    (exactly as traffic sends it), never following a redirect (a redirect to an internal
    service must not turn its answers into our model list), answers bounded in size.

    Probes have their own transport so they never queue behind traffic (or starve it), and
    at most ``PER_BACKEND`` of them run against one backend at once.
    """

    PER_BACKEND = 4

    def __init__(self, transport: Transport, timeout: float) -> None:
        self.transport = transport
        self.timeout = timeout
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def fetch(
        self,
        backend: Backend,
        method: str,
        path: str,
        *,
        body: Any = None,
        allow_404: bool = False,
    ) -> Any:
        """``METHOD backend.url+path``, parsed. Returns None on 404 when ``allow_404``.

        Any transport failure, non-2xx status or unparseable body becomes ProbeError (a
        backend that answers 200 with garbage is not healthy); a timeout stays a
        TimeoutError, which the health checker words itself.
        """
        slots = self._slots.setdefault(backend.url, asyncio.Semaphore(self.PER_BACKEND))
        async with slots:
            try:
                return await self.fetch_url(
                    backend.url,
                    method,
                    path,
                    body=body,
                    headers=auth.headers_for(backend),
                    tls=backend.tls,
                    allow_404=allow_404,
                )
            except ProbeError as exc:
                if exc.status is not None and auth.key_rejected(backend, exc.status, exc.body):
                    provider = auth.provider_name(backend)
                    raise ProbeError(
                        f"API key rejected by {provider} (HTTP {exc.status})"
                    ) from None
                raise

    async def fetch_url(
        self,
        url: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        tls: TLS | None = None,
        allow_404: bool = False,
    ) -> Any:
        data = None if body is None else orjson.dumps(body)
        sent = dict(headers or {})
        if data is not None:
            sent["Content-Type"] = "application/json"
        async with asyncio.timeout(self.timeout):
            status, raw = await self._exchange(url, method, path, data, sent, tls)
        if status == 404 and allow_404:
            return None
        if 300 <= status < 400:
            raise ProbeError(f"{method} {path} answered HTTP {status} (redirects are not followed)")
        if status >= 400:
            raise ProbeError(f"{method} {path} answered HTTP {status}", status, raw)
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            raise ProbeError(f"{method} {path} answered invalid JSON") from None

    async def _exchange(
        self,
        url: str,
        method: str,
        path: str,
        data: bytes | None,
        headers: dict[str, str],
        tls: TLS | None,
    ) -> tuple[int, bytes]:
        try:
            answer = await self.transport.request(url, method, path, data, headers, tls=tls)
            try:
                return answer.status, await answer.read(self.timeout)
            finally:
                answer.release()
        except TimeoutError:
            raise  # the health checker words timeouts itself (and knows when one is expected)
        except (UpstreamError, OSError) as exc:
            raise ProbeError(describe(exc)) from None

    def forget(self, backend: Backend) -> None:
        self._slots.pop(backend.url, None)


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
