"""FakeServer: HTTP lifecycle, request recording and misbehaviour primitives.

A real aiohttp server on 127.0.0.1 that records every request and can
misbehave on command (see `Behavior`):

* `chat_behavior` applies to POST /v1/chat/completions and /v1/embeddings.
* `health_behavior` applies to the probe endpoints of each kind (model
  lists, /health, /props, /api/tags, ...).

Meaning of each behaviour for a non-streamed answer: HANG and STALL_STREAM
never answer; HEADERS_THEN_STALL sends 200 + JSON headers (Content-Length
of the real body) and nothing else; TRUNCATED sends half of the body and
closes; CUT_STREAM aborts the connection without any response; SLOW answers
after `delay` seconds.  For a stream (`"stream": true`) SLOW waits `delay`
before the headers and between events; CUT_STREAM / STALL_STREAM send
`cut_after` chunk events then abort / stall; TRUNCATED sends half of the
whole SSE body under a Content-Length.  HANG, ERROR_* and INVALID_JSON take
effect before the model is even looked up.

Stalled handlers poll their connection and end as soon as the peer goes
away (counted in `cancelled_streams` for streams) or `stop()` is called.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ClassVar, Self

import orjson
from aiohttp import web

from . import shapes
from .models import Behavior, HeaderDict, ReceivedRequest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]

_PRE_ANSWER = {Behavior.HANG, Behavior.INVALID_JSON} | {
    b for b in Behavior if b.error_status is not None
}


class PeerGone(ConnectionResetError):
    """Raised inside a handler when its connection is gone."""


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


class FakeServer:
    """A real aiohttp server on 127.0.0.1 (port 0 by default) that can misbehave."""

    kind: ClassVar[str] = "server"

    def __init__(self) -> None:
        self.chat_behavior: Behavior = Behavior.OK
        self.health_behavior: Behavior = Behavior.OK
        self.cut_after: int = 2
        self.delay: float = 0.5
        self.error_message: str | None = None  # what ERROR_* answers say (default: generic)
        self.requests: list[ReceivedRequest] = []
        self.active_streams = 0
        self.cancelled_streams = 0
        self.active_requests = 0  # chat/embeddings handlers in flight
        self.peak_requests = 0  # the most that were ever in flight at once
        # Set to hold every chat answer until the test opens it (gate.set()).
        self.gate: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = False
        self.ssl_context: ssl.SSLContext | None = None  # set before start: serve HTTPS

    # ------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} was never started")
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self, port: int = 0) -> str:
        if self._runner is not None:
            return self.url
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 2**20)
        for method, path, handler in self._routes():
            if method == "GET":
                app.router.add_get(path, handler)
            else:
                app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(
            runner, "127.0.0.1", port, reuse_address=True, ssl_context=self.ssl_context
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self.url

    async def stop(self) -> None:
        """Stop listening and abort every open connection (idle or busy)."""
        runner = self._runner
        if runner is None:
            return
        self._stopping = True
        try:
            for site in list(runner.sites):
                await site.stop()
            server = runner.server
            if server is not None:
                for conn in server.connections:
                    if conn.transport is not None:
                        conn.transport.abort()
            await runner.cleanup()
        finally:
            self._runner = None
            self._stopping = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def reset(self) -> None:
        """Forget recorded requests and counters; behaviours back to OK."""
        self.requests.clear()
        self.cancelled_streams = 0
        self.chat_behavior = Behavior.OK
        self.health_behavior = Behavior.OK

    @property
    def chat_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/chat/completions"]

    @property
    def embedding_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/embeddings"]

    # ------------------------------------------------------------- routing
    def _routes(self) -> list[Route]:
        return self._extra_routes()

    def _extra_routes(self) -> list[Route]:
        return []

    def _probe(self, handler: Handler, *, native: bool = False) -> Handler:
        """Wrap a probe endpoint so that `health_behavior` applies to it."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            behavior = self.health_behavior
            if behavior in _PRE_ANSWER:
                return await self._misbehave(request, behavior, native=native)
            return await self._deliver(request, await handler(request), behavior)

        return wrapped

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        parsed: Any = None
        if body:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
        self.requests.append(
            ReceivedRequest(
                method=request.method,
                path=request.path,
                headers=HeaderDict(request.headers.items()),
                body=body,
                json=parsed,
                query=dict(request.query),
            )
        )
        if isinstance(request.match_info.http_exception, web.HTTPNotFound):
            return self._not_found(request)
        try:
            return await handler(request)
        except PeerGone:
            return web.Response(status=499)  # nobody will read it

    def _not_found(self, request: web.Request) -> web.StreamResponse:
        return json_response(
            shapes.error_body(404, f"Invalid URL ({request.method} {request.path})"), status=404
        )

    # ------------------------------------------------------- misbehaviour
    def error_response(
        self, status: int, message: str, *, native: bool = False, param: str | None = None
    ) -> web.Response:
        """An error; `native` = the kind's own non-OpenAI endpoints."""
        return json_response(shapes.error_body(status, message, param=param), status=status)

    async def _misbehave(
        self, request: web.Request, behavior: Behavior, *, native: bool = False
    ) -> web.StreamResponse:
        """Answer for the pre-answer behaviours (HANG, ERROR_*, INVALID_JSON)."""
        if behavior is Behavior.HANG:
            await self._stall(request)
        if behavior is Behavior.INVALID_JSON:
            return web.Response(body=b"{not json", content_type="application/json")
        status = behavior.error_status or 500
        headers = {"Retry-After": "7"} if status == 429 else None
        message = self.error_message or f"fake {self.kind} error {status}"
        resp = self.error_response(status, message, native=native)
        if headers:
            resp.headers.update(headers)
        return resp

    async def _deliver(
        self, request: web.Request, resp: web.StreamResponse, behavior: Behavior
    ) -> web.StreamResponse:
        """Send a complete response, misbehaving as `behavior` says."""
        if behavior in _PRE_ANSWER:
            return await self._misbehave(request, behavior)
        if behavior is Behavior.SLOW:
            await self._sleep(request, self.delay)
        elif behavior is Behavior.STALL_STREAM:
            await self._stall(request)
        elif behavior is Behavior.CUT_STREAM:
            self._abort(request)
            return resp
        elif behavior in (Behavior.HEADERS_THEN_STALL, Behavior.TRUNCATED):
            body = b""
            if isinstance(resp, web.Response) and isinstance(resp.body, bytes):
                body = resp.body
            partial = web.StreamResponse(status=resp.status)
            if "Content-Type" in resp.headers:
                partial.content_type = resp.content_type
            # an empty body still gets a non-zero length so the peer waits for bytes
            partial.content_length = len(body) or 16
            await partial.prepare(request)
            if behavior is Behavior.HEADERS_THEN_STALL:
                await self._stall(request)
            await partial.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)  # let the half body reach the peer
            self._abort(request)
            return partial
        return resp

    async def _sleep(self, request: web.Request, seconds: float) -> None:
        """Sleep, raising PeerGone as soon as the connection is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise PeerGone("peer went away")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(0.02, remaining))

    async def _stall(self, request: web.Request) -> None:
        await self._sleep(request, math.inf)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _abort(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()
