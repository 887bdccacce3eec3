"""Send a request to the routed backend, failing over until one answers.

Until the first byte goes to the client, any backend failure (refused, reset, DNS, TLS,
timeout, 5xx, invalid JSON, a stream that ends before its first event) is retried on
another backend serving the model, then down the fallback chain. After the first byte the
backend is fixed: a failure ends the stream with an error event. 4xx answers are the
client's business and pass through as they came (429: another backend is tried first).

Three timeouts, never a total cap: connect (``connect_timeout_seconds``), first byte or
first stream event (``request_timeout_seconds``), and idle gap between two stream reads
(``stream_idle_timeout_seconds``), which also bounds a client that stops reading.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from aiohttp import web

from nexus.backends import traffic
from nexus.config import Config
from nexus.errors import (
    BackendBadResponse,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    NexusError,
)
from nexus.health import HealthChecker
from nexus.proxy.relay import StreamRelay
from nexus.records import RequestRecord
from nexus.registry import Backend, Registry
from nexus.routing.requirements import Requirements
from nexus.routing.router import Plan, Route, Router
from nexus.transport import (
    ConnectTimeout,
    MalformedResponse,
    Pool,
    Response,
    UpstreamError,
    describe,
)

PASSTHROUGH_HEADERS = {"retry-after": "Retry-After", "content-type": "Content-Type"}
MAX_ERROR_BODY = 64 * 1024


class Upstream:
    """An upstream response whose headers arrived, with what the relay needs."""

    __slots__ = ("resp", "route", "sent_at")

    def __init__(self, route: Route, resp: Response, sent_at: float) -> None:
        self.route = route
        self.resp = resp
        self.sent_at = sent_at

    @property
    def backend(self) -> Backend:
        return self.route.backend

    def elapsed_ms(self) -> float:
        """Time since this attempt was sent: the backend's own latency, whatever earlier
        attempts of the same request cost."""
        return (time.perf_counter() - self.sent_at) * 1000


class Forwarder:
    def __init__(
        self, config: Config, registry: Registry, router: Router, health: HealthChecker
    ) -> None:
        self.config = config
        self.registry = registry
        self.router = router
        self.health = health
        server = config.server
        self.ttfb = server.request_timeout_seconds
        self.idle = server.stream_idle_timeout_seconds
        self.attempts_per_model = 1 + config.routing.max_retries
        self.penalty = config.health_check.interval_seconds
        # The read timeout bounds the wait for the first byte and every gap within a JSON
        # body; streams keep their own, shorter idle deadline (see relay.py).
        self.pool = Pool(server.connect_timeout_seconds, self.ttfb)

    def stop(self) -> None:
        self.pool.close()

    # -- entry point --------------------------------------------------------------------

    async def forward(
        self,
        request: web.Request,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        req: Requirements,
        record: RequestRecord,
    ) -> web.StreamResponse:
        plan = self.router.plan(req.model)
        last: NexusError | None = None
        # A 429 is kept, not answered, while another backend may serve: if none can, the
        # client gets it (with its Retry-After) rather than a vaguer error.
        rate_limited: web.Response | None = None
        while True:
            try:
                route = self.router.select(plan, req, self.attempts_per_model)
            except NexusError as exc:
                if rate_limited is not None:
                    return self._relay_client_error(rate_limited, record)
                raise (last or exc) from None
            self._note_route(record, route, plan)
            payload = self._payload(body, raw, route, req)
            try:
                upstream = await self._send(request, path, route, payload, record)
            except BackendError as exc:
                self.failed(route.backend, exc, record)
                last = exc
                continue
            response = await self._answer(request, upstream, plan, req, record)
            if isinstance(response, NexusError):
                last = response
                continue
            if isinstance(response, web.Response) and response.status >= 400:
                if response.status == 429:
                    rate_limited = response
                    continue
                return self._relay_client_error(response, record)
            return response

    # -- one attempt --------------------------------------------------------------------

    def _payload(self, body: dict[str, Any], raw: bytes, route: Route, req: Requirements) -> bytes:
        changes: dict[str, Any] = {}
        if route.model != req.model:
            changes["model"] = route.model
        if req.stream and not req.include_usage and traffic.asks_stream_usage(route.backend.type):
            options = body.get("stream_options") or {}
            changes["stream_options"] = {**options, "include_usage": True}
        if not changes:
            return raw  # byte-faithful: the client's own bytes
        return orjson.dumps({**body, **changes})

    def _headers(
        self, request: web.Request, backend: Backend, record: RequestRecord
    ) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if traffic.accepts_request_id(backend.type, record.request_id):
            headers["X-Request-Id"] = record.request_id
        key = os.environ.get(backend.api_key_env, "").strip() if backend.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif auth := request.headers.get("Authorization"):
            headers["Authorization"] = auth  # F01: local backends see the client's credentials
        return headers

    async def _send(
        self, request: web.Request, path: str, route: Route, payload: bytes, record: RequestRecord
    ) -> Upstream:
        backend = route.backend
        self.registry.increment_pending(backend)
        sent = time.perf_counter()
        try:
            resp = await self.pool.post(
                backend.url, path, payload, self._headers(request, backend, record)
            )
        except BaseException as exc:
            self.registry.decrement_pending(backend)
            record.upstream_seconds += time.perf_counter() - sent
            error = self._send_error(backend, exc)
            if error is None:
                raise  # cancelled, or a bug of ours: not the backend's failure
            raise error from None
        return Upstream(route, resp, sent)

    def _send_error(self, backend: Backend, exc: BaseException) -> BackendError | None:
        name = backend.name
        if isinstance(exc, ConnectTimeout):
            return BackendTimeout(f"backend '{name}' unreachable: {exc}")
        if isinstance(exc, TimeoutError):
            return BackendTimeout(f"backend '{name}' did not answer within {self.ttfb:g}s")
        if isinstance(exc, UpstreamError | OSError):
            return BackendUnreachable(f"backend '{name}' unreachable: {describe(exc)}")
        return None

    async def _answer(
        self,
        request: web.Request,
        upstream: Upstream,
        plan: Plan,
        req: Requirements,
        record: RequestRecord,
    ) -> web.StreamResponse | NexusError:
        """Relay a good answer (returns the response), or return the error to fail over on."""
        resp, backend = upstream.resp, upstream.backend
        try:
            if resp.status >= 500:
                text = await self._read_body(resp, upstream, record, limit=MAX_ERROR_BODY)
                error = BackendBadResponse(
                    f"backend '{backend.name}' answered HTTP {resp.status}{_upstream_message(text)}"
                )
                self.failed(backend, error, record)
                return error
            if resp.status >= 400:
                raw = await self._read_body(resp, upstream, record, limit=MAX_ERROR_BODY)
                return self._passthrough(resp, raw, upstream, record)
            is_sse = resp.content_type == "text/event-stream"
            if req.stream and is_sse:
                relay = StreamRelay(self, request, upstream, plan, req, record)
                return await relay.run()
            raw = await self._read_body(resp, upstream, record, limit=None)
            return self._complete(raw, upstream, plan, record)
        except BackendError as exc:
            self.failed(backend, exc, record)
            return exc
        finally:
            resp.release()
            self.registry.decrement_pending(backend)

    async def _read_body(
        self,
        resp: Response,
        upstream: Upstream,
        record: RequestRecord,
        limit: int | None,
    ) -> bytes:
        backend = upstream.backend
        try:
            raw = await resp.read(self.ttfb, limit, truncate=limit is not None)
        except TimeoutError:
            raise BackendTimeout(
                f"backend '{backend.name}' stalled while sending its answer"
            ) from None
        except MalformedResponse as exc:
            raise BackendBadResponse(f"backend '{backend.name}': {describe(exc)}") from None
        except (UpstreamError, OSError) as exc:
            raise BackendUnreachable(
                f"backend '{backend.name}' failed mid-answer: {describe(exc)}"
            ) from None
        finally:
            record.upstream_seconds += time.perf_counter() - upstream.sent_at
        return raw

    def _complete(
        self, raw: bytes, upstream: Upstream, plan: Plan, record: RequestRecord
    ) -> web.Response:
        backend = upstream.backend
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendBadResponse(
                f"backend '{backend.name}' answered with invalid JSON"
            ) from None
        if not isinstance(parsed, dict):
            raise BackendBadResponse(f"backend '{backend.name}' answered an unexpected body")
        record.usage(parsed.get("usage"))
        if upstream.route.model != plan.requested and "model" in parsed:
            parsed["model"] = plan.requested  # the client sees the name it asked for
            raw = orjson.dumps(parsed)
        self.registry.update_latency(backend, upstream.elapsed_ms())
        record.status = 200
        return web.Response(
            body=raw,
            status=200,
            content_type="application/json",
            headers=self.route_headers(upstream, record),
        )

    def _passthrough(
        self,
        resp: Response,
        raw: bytes,
        upstream: Upstream,
        record: RequestRecord,
    ) -> web.Response:
        headers = self.route_headers(upstream, record)
        for name, title in PASSTHROUGH_HEADERS.items():
            if name in resp.headers:
                headers[title] = resp.headers[name]
        headers.setdefault("Content-Type", "application/json")
        return web.Response(body=raw, status=resp.status, headers=headers)

    # -- bookkeeping --------------------------------------------------------------------

    @staticmethod
    def _relay_client_error(response: web.Response, record: RequestRecord) -> web.Response:
        """A backend's 4xx is the answer: counted as such only when it is the final one."""
        record.status = response.status
        record.error_type = "backend_client_error"
        return response

    def route_headers(self, upstream: Upstream, record: RequestRecord) -> dict[str, str]:
        headers = {
            "X-Nexus-Backend": upstream.backend.name,
            "X-Nexus-Route-Reason": record.route_reason,
            "X-Request-Id": record.request_id,
        }
        if upstream.route.fallback:
            headers["X-Nexus-Fallback-Model"] = upstream.route.model
        return headers

    def _note_route(self, record: RequestRecord, route: Route, plan: Plan) -> None:
        if record.backend:
            record.retry_count += 1
        record.attempts.append(route.backend.name)
        record.backend = route.backend.name
        record.backend_type = route.backend.type
        record.routed_model = route.model
        record.route_reason = route.reason
        if route.fallback:
            record.fallback_chain = plan.models[: plan.models.index(route.model) + 1]

    def failed(self, backend: Backend, error: NexusError, record: RequestRecord) -> None:
        """An attempt failed: penalise the backend now and ask for a probe soon."""
        record.error = error.message
        self.registry.penalize(backend, self.penalty, error.message)
        if self.router.quality is not None:
            self.router.quality.failure(record.routed_model, backend.name)
        self.health.check_soon(backend)


def _upstream_message(raw: bytes) -> str:
    """The upstream's own error message, short, if it sent an OpenAI-shaped one."""
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    message = error.get("message") if isinstance(error, dict) else error
    return f": {str(message)[:200]}" if message else ""
