"""Forward: send the request to the routed backend, failing over until one answers.

Until the first byte goes to the client, any backend failure (refused, reset, DNS, TLS,
timeout, 5xx, a redirect, invalid JSON, a stream that ends before its first event) is
retried on another backend serving the model, then down the fallback chain. After the
first byte the backend is fixed; a failure ends the stream (the record stage writes the
error event). 4xx answers are the client's business and are relayed, as JSON only
(429: another backend is tried first).

Three timeouts, never a total cap: connect (``connect_timeout_seconds``), first byte or
first stream event (``request_timeout_seconds``), and the idle gap between two stream reads
or writes (``stream_idle_timeout_seconds``).
"""

from __future__ import annotations

import time
from dataclasses import replace

import orjson

from nexus.asgi import Headers
from nexus.asgi.io import BASE_HEADERS, header
from nexus.backends import auth, traffic
from nexus.config import Config
from nexus.errors import (
    BackendBadResponse,
    BackendError,
    BackendRefused,
    NexusError,
    NoHealthyBackend,
    RequestRefused,
    printable,
)
from nexus.health import HealthChecker
from nexus.pipeline.cost import Costs
from nexus.pipeline.exchange import Exchange
from nexus.pipeline.inbound import SSE, ClientTranslation
from nexus.pipeline.outbound import NativeOutbound, Outbound, outbound_for
from nexus.pipeline.record import Reply, Streamed
from nexus.pipeline.relay import Relay
from nexus.pipeline.upstream import upstream_failure
from nexus.pipeline.wait import Queue
from nexus.quality import QualityTracker
from nexus.records import RequestRecord
from nexus.registry import Backend, DiscoverySource, Registry
from nexus.routing.privacy import fresh_context
from nexus.routing.router import Busy, Plan, Route, Router
from nexus.transport import Answer, Transport

MDNS = DiscoverySource.MDNS
MAX_ERROR_BODY = 64 * 1024
# A provider saying it is too busy (Anthropic's 529): kept while another backend may serve,
# like a 429, and answered as the standard status for it.
BUSY_STATUSES = {529: 503}
STREAM_TYPES = ("text/event-stream", "application/x-ndjson")
PANIC_CONNECT_SECONDS = 0.5
SERVICE_EWMA_ALPHA = 0.2
REFUSING_STATUSES = (500, 501)  # what a server answers when it rejects what it was asked


class Forwarder:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        router: Router,
        health: HealthChecker,
        quality: QualityTracker,
        transport: Transport,
        queue: Queue | None = None,
    ) -> None:
        self.registry = registry
        self.queue = queue
        self.router = router
        self.health = health
        self.quality = quality
        self.transport = transport
        self.costs = Costs()
        server = config.server
        self.ttfb = server.request_timeout_seconds
        self.idle = server.stream_idle_timeout_seconds
        self.max_event = server.max_stream_event_bytes
        self.panic_connect = min(PANIC_CONNECT_SECONDS, server.connect_timeout_seconds)
        self.attempts_per_model = 1 + config.routing.max_retries  # (the queue's too)
        self.penalty = config.health_check.interval_seconds

    async def forward(self, ex: Exchange) -> Reply | Streamed:
        """The answer of the first backend that gives one; raises the reason none did."""
        plan, req, record = ex.plan, ex.requirements, ex.record
        assert plan is not None
        last: NexusError | None = None
        # A 429 is kept, not answered, while another backend may serve: if none can, the
        # client gets it (with its Retry-After) rather than a vaguer error.
        rate_limited: Reply | None = None
        # A backend's 500 may be the request's fault (llama-cpp-python validates json_schema
        # with a 500): it is blamed on the backend only once another backend has answered
        # the same request; if that one refuses it too, the request is refused.
        suspect: tuple[Route, BackendRefused] | None = None
        while True:
            try:
                try:
                    route = self.router.select(plan, req, self.attempts_per_model)
                except Busy as busy:
                    assert self.queue is not None  # the router says Busy only with a queue
                    route = await self.queue.wait(ex, busy)
            except NexusError as exc:
                note_privacy(record, plan, None)
                if suspect is not None:
                    self.blame(*suspect)
                if rate_limited is not None:
                    return rate_limited
                raise exhausted(exc, last, record, plan) from None
            note_route(record, route, plan.models)
            note_privacy(record, plan, route)
            try:
                result = await self._attempt(ex, route)
            except BackendRefused as exc:
                record.failures.append(f"{route.backend.name}: {exc.logged}")
                if suspect is not None:
                    raise refused(suspect[1], route, exc) from None
                suspect, last = (route, exc), exc
                continue
            except BackendError as exc:
                self.failed(route, exc, record)
                last = exc
                continue
            if isinstance(result, Reply) and result.busy:
                rate_limited = result
                continue
            if suspect is not None:
                self.blame(*suspect)
            if not (isinstance(result, Streamed) and result.error):
                if route.panic:
                    self.health.traffic_succeeded(route.backend)
                if plan.conversation is not None:
                    self.router.remember(plan, route)
            return result

    # -- one attempt ----------------------------------------------------------------------

    async def _attempt(self, ex: Exchange, route: Route) -> Reply | Streamed:
        backend = route.backend
        inbound = ex.endpoint.inbound
        if route.stripped and not ex.stripped:
            strip_history(ex)
        elif ex.stripped and not route.stripped:
            restore_history(ex)
        # (A stripped request is the translated one: the client's own body has the history.)
        ex.native = inbound is not None and backend.type == inbound.native and not ex.stripped
        outbound = NativeOutbound(inbound) if ex.native and inbound else outbound_for(backend.type)
        path, payload = outbound.request(ex, route)
        headers = self._headers(ex, backend)
        if not route.reserved and backend.limiter is not None:  # (else the queue took it)
            backend.limiter.take(time.monotonic())
        sent = time.perf_counter()
        self.registry.begin_serving(backend, route.model, route.reserved)
        try:
            try:
                answer = await self.transport.request(
                    backend.url,
                    "POST",
                    path,
                    payload,
                    headers,
                    tls=backend.tls,
                    # An unhealthy backend tried in panic: a dead one must cost little.
                    connect_timeout=self.panic_connect if route.panic else None,
                )
            except Exception as exc:
                ex.record.upstream_seconds += time.perf_counter() - sent
                error = upstream_failure(backend.name, exc, "before answering", self.ttfb)
                if error is None:
                    raise
                raise error from None
            try:
                reply = self._whole(ex, route, outbound, answer, sent)
                if reply is not None:
                    return reply
                return await self._answer(ex, route, outbound, answer, sent)
            finally:
                answer.release()
        finally:
            self.registry.end_serving(backend, route.model)
            held = time.perf_counter() - sent
            if backend.service_seconds:
                backend.service_seconds += SERVICE_EWMA_ALPHA * (held - backend.service_seconds)
            else:  # the first observation is the estimate (not a fifth of it)
                backend.service_seconds = held
            if self.queue is not None:
                self.queue.dispatch(backend)

    def _headers(self, ex: Exchange, backend: Backend) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        rid = ex.record.request_id
        if traffic.accepts_request_id(backend.type, rid):
            headers["X-Request-Id"] = rid
        own = auth.headers_for(backend)
        if own:
            headers.update(own)
        if ex.native and (beta := header(ex.scope, b"anthropic-beta")):
            headers["anthropic-beta"] = beta  # the client's own opt-ins, to its own API
        if "Authorization" in own or backend.cloud or backend.discovery_source is MDNS:
            # F01: local backends see the client's credentials; a cloud backend (which has
            # its own key) and a backend any LAN device could have announced never do.
            return headers
        if ex.tenant is not None:
            return headers  # auth on: the client's credential is its Nexus key, ours alone
        if authorization := ex.authorization:
            headers["Authorization"] = authorization
        return headers

    def _whole(
        self, ex: Exchange, route: Route, outbound: Outbound, answer: Answer, sent: float
    ) -> Reply | None:
        """The reply to a 2xx answer that is all here already (the usual case, not a
        stream): made without awaiting anything. None: ``_answer`` reads it."""
        if answer.status >= 300 or (ex.requirements.stream and answer.content_type in STREAM_TYPES):
            return None
        raw = answer.whole()
        if raw is None:
            return None
        ex.record.upstream_seconds += time.perf_counter() - sent
        return self._complete(ex, route, outbound, raw, sent)

    async def _answer(
        self, ex: Exchange, route: Route, outbound: Outbound, answer: Answer, sent: float
    ) -> Reply | Streamed:
        if answer.status >= 300:
            text = await self._read(ex.record, answer, route, sent, MAX_ERROR_BODY)
            return self._refusal(ex, route, outbound, answer, text)
        if ex.requirements.stream and answer.content_type in STREAM_TYPES:
            return await self._stream(ex, route, outbound, answer, sent)
        raw = await self._read(ex.record, answer, route, sent, None)
        return self._complete(ex, route, outbound, raw, sent)

    async def _read(
        self, record: RequestRecord, answer: Answer, route: Route, sent: float, limit: int | None
    ) -> bytes:
        try:
            return await answer.read(self.ttfb, limit, truncate=limit is not None)
        except Exception as exc:
            error = upstream_failure(route.backend.name, exc, "mid-answer", self.ttfb)
            if error is None:
                raise
            raise error from None
        finally:
            record.upstream_seconds += time.perf_counter() - sent

    def _refusal(
        self, ex: Exchange, route: Route, outbound: Outbound, answer: Answer, text: bytes
    ) -> Reply:
        """A 3xx, 4xx or 5xx: raises the BackendError to fail over on, or returns the
        client error to relay (as JSON only)."""
        status, backend = answer.status, route.backend
        core = f"backend '{backend.name}' answered HTTP {status}"
        message = outbound.error_text(text)
        quoted = f": {printable(message)}" if message else upstream_text(text)
        if status == 404 and ex.requirements.completions:
            # Legacy completions are not served everywhere: this backend lacks them, which
            # routing remembers (until its next probe) and another backend may not.
            model = backend.models.get(route.model)
            if model is not None:
                backend.models[route.model] = replace(model, supports_completions=False)
            raise BackendBadResponse(f"backend '{backend.name}' does not serve /v1/completions")
        if status in REFUSING_STATUSES:
            raise BackendRefused(
                core + quoted,
                upstream_status=status,
                upstream_text=quoted.removeprefix(": "),
                logged=core,
            )
        if auth.key_rejected(backend, status, text):
            # The key is ours, not the client's: a configuration problem of this backend,
            # which another backend may not share.
            who = auth.provider_name(backend)
            raise BackendBadResponse(
                f"API key rejected by {who} (HTTP {status}){quoted}", logged=core
            )
        if status < 400 or (status >= 500 and status not in BUSY_STATUSES):
            core += " (redirects are not followed)" if status < 400 else ""
            raise BackendBadResponse(core + quoted, logged=core)
        return self._client_error(ex, route, outbound, answer, text, core + quoted)

    def _client_error(
        self, ex: Exchange, route: Route, outbound: Outbound, answer: Answer, raw: bytes, why: str
    ) -> Reply:
        """A backend's 4xx (or a provider's "busy"), relayed only as JSON: an HTML page from a
        backend must never be served on Nexus's origin, where a cross-site form could make a
        browser render it; a foreign API's error body is put in OpenAI's shape."""
        headers = self.route_headers(ex, route)
        status = BUSY_STATUSES.get(answer.status, answer.status)
        if "retry-after" in answer.headers:
            headers.append((b"retry-after", answer.headers["retry-after"].encode("latin-1")))
        elif status == 503:
            headers.append((b"retry-after", b"1"))  # as every 503 of ours says
        wrapped = not outbound.relays_errors or status != answer.status or not _json_object(raw)
        if wrapped:
            error = NexusError(why, code="backend_client_error")
            error.type = "invalid_request_error" if status < 500 else "service_unavailable"
            raw = error.body(ex.record.request_id)
        busy = answer.status in (429, *BUSY_STATUSES)
        return Reply(status, raw, headers, busy=busy, native=ex.native and not wrapped)

    def _complete(
        self, ex: Exchange, route: Route, outbound: Outbound, raw: bytes, sent: float
    ) -> Reply:
        name = route.backend.name
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendBadResponse(f"backend '{name}' answered with invalid JSON") from None
        if not isinstance(parsed, dict):
            raise BackendBadResponse(f"backend '{name}' answered an unexpected body")
        requested = ex.requirements.model
        translated = outbound.answer(ex, route, parsed)
        if translated is not None:
            parsed, raw = translated, orjson.dumps(translated)
        elif route.model != requested and "model" in parsed:
            parsed["model"] = requested  # the client sees the name it asked for
            raw = orjson.dumps(parsed)
        record = ex.record
        record.usage(outbound.usage(parsed))
        self.costs.charge(record, route.backend, route.model, ex.requirements)
        self.registry.update_latency(route.backend, (time.perf_counter() - sent) * 1000)
        return Reply(200, raw, self.route_headers(ex, route, record.cost_usd), native=ex.native)

    async def _stream(
        self, ex: Exchange, route: Route, outbound: Outbound, answer: Answer, sent: float
    ) -> Streamed:
        record = ex.record
        backend = route.backend
        translation = outbound.stream(ex, route)
        inbound = ex.endpoint.inbound
        if inbound is not None and not ex.native:
            client = inbound.stream(ex.requirements.model, record.request_id, record.started)
            translation = ClientTranslation(translation, client)
        relay = Relay(answer, backend.name, record, translation, self.idle, self.max_event, sent)
        events = await relay.first_events(sent + self.ttfb)
        first_ms = (time.perf_counter() - sent) * 1000  # this backend's time to first event
        record.ttft_seconds = time.perf_counter() - record.started
        estimate = self.costs.estimate(backend, route.model, ex.requirements.prompt_chars)
        kind = inbound.stream_type if inbound is not None else SSE
        head = [(b"content-type", kind), (b"cache-control", b"no-cache"), *BASE_HEADERS]
        head += self.route_headers(ex, route, estimate)
        await ex.send({"type": "http.response.start", "status": 200, "headers": head})
        ex.started = True
        error = await relay.pump(ex.send, events)
        self.costs.charge(record, backend, route.model, ex.requirements)
        if error is None:
            self.registry.update_latency(backend, first_ms)
        elif isinstance(error, BackendError):
            self.failed(route, error, record)
        return Streamed(error)

    # -- bookkeeping --------------------------------------------------------------------

    def route_headers(self, ex: Exchange, route: Route, cost: float | None = None) -> Headers:
        """The Nexus-Transparent headers: who answered, why, in which zone, at what cost."""
        backend = route.backend
        headers: Headers = [
            (b"x-nexus-backend", backend.name.encode()),
            (b"x-nexus-backend-type", b"cloud" if backend.cloud else b"local"),
            (b"x-nexus-route-reason", route.reason.encode()),
            (b"x-nexus-privacy-zone", backend.zone.encode()),
            (b"x-request-id", ex.record.request_id.encode()),
        ]
        if route.fallback:
            headers.append((b"x-nexus-fallback-model", header_safe(route.model)))
        if route.stripped:
            headers.append((b"x-nexus-context-stripped", b"true"))
        if (waited := ex.record.queue_wait_seconds) is not None:
            headers.append((b"x-nexus-queue-wait-ms", str(round(waited * 1000)).encode()))
        if self.router.budget is not None:
            headers += self.router.budget.headers()
        if ex.limits is not None:
            headers += ex.limits.headers()
        if cost is not None:
            headers.append((b"x-nexus-cost-estimated", f"{cost:.6f}".encode()))
        return headers

    def failed(self, route: Route, error: NexusError, record: RequestRecord) -> None:
        """An attempt failed: note why, and blame the backend."""
        record.failures.append(f"{route.backend.name}: {error.logged}")
        self.blame(route, error)

    def blame(self, route: Route, error: NexusError) -> None:
        """Penalise the backend now (routing avoids it) and ask for a probe soon."""
        backend = route.backend
        self.registry.penalize(backend, self.penalty, error.logged)
        self.quality.failure(route.model, backend.name)
        self.health.check_soon(backend)


def note_route(record: RequestRecord, route: Route, models: list[str]) -> None:
    """Which backend and model this attempt uses (the outcome is the record stage's)."""
    if record.backend:
        record.retry_count += 1
    record.attempts.append(route.backend.name)
    record.backend = route.backend.name
    record.backend_type = route.backend.type
    record.routed_model = route.model
    record.route_reason = route.reason
    if route.fallback:
        record.fallback_chain = models[: models.index(route.model) + 1]


def note_privacy(record: RequestRecord, plan: Plan, route: Route | None) -> None:
    """What the zone rules did to this request, for the log and nexus_privacy_blocks_total."""
    record.privacy_zone = plan.zone
    if route is not None and route.stripped:
        record.privacy_action = "stripped"
    elif plan.zone_blocked and not record.privacy_action:
        record.privacy_action = "blocked"


def strip_history(ex: Exchange) -> None:
    """Cross-zone overflow: from now on the request is its system message(s) and its last
    user message, for this attempt and any other in the open zone."""
    ex.whole = ex.body, ex.raw
    ex.body = fresh_context(ex.body)
    ex.raw = orjson.dumps(ex.body)
    ex.stripped = True


def restore_history(ex: Exchange) -> None:
    """Back in the request's own zone after the overflow failed: the whole request again."""
    assert ex.whole is not None
    ex.body, ex.raw = ex.whole
    ex.stripped = False


def exhausted(
    router_error: NexusError, last: NexusError | None, record: RequestRecord, plan: Plan
) -> NexusError:
    """The answer when no backend is left to try: the router's reason if none was tried,
    else what went wrong, naming every backend tried and why. When a zone rule kept other
    backends out, a 503 with the zone's context (F13): the client is told the request stays
    in its zone, not only that a backend failed."""
    if last is None:
        return router_error
    failures = "; ".join(record.failures)
    context = router_error.context
    if record.route_reason == "panic":
        error: NexusError = NoHealthyBackend(
            f"{router_error.message}; tried anyway: {failures}", context=context
        )
    elif plan.zone_blocked:
        error = NoHealthyBackend(
            f"no {plan.zone} backend could serve model '{plan.requested}' ({failures}); "
            f"backends outside the {plan.zone} zone are not used for it",
            context=context,
        )
    elif len(record.failures) > 1:
        error = last  # its status and code stand for the whole: the last failure
        error.message = error.logged = f"every backend tried failed: {failures}"
    else:
        error = last
    error.headers["X-Nexus-Backend"] = record.backend
    return error


def refused(first: BackendRefused, route: Route, second: BackendRefused) -> RequestRefused:
    """Two backends refused the same request with a 500: the request's fault."""
    status = second.upstream_status
    text = second.upstream_text or first.upstream_text
    core = (
        f"the request was refused by two backends (the last, '{route.backend.name}', "
        f"answered HTTP {status})"
    )
    return RequestRefused(
        core + (f": {text}" if text else ""),
        context={"upstream_status": status},
        headers={"X-Nexus-Backend": route.backend.name},
        logged=core,
    )


def header_safe(text: str) -> bytes:
    """A name from the network as a header value: printable ASCII kept, the rest
    percent-encoded (a model name may be any Unicode, and a line break must never pass)."""
    raw = text.encode()
    if all(0x20 < b < 0x7F and b != 0x25 for b in raw):
        return raw
    return "".join(chr(b) if 0x20 < b < 0x7F and b != 0x25 else f"%{b:02X}" for b in raw).encode()


def _json_object(raw: bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


def upstream_text(raw: bytes) -> str:
    """A short, printable excerpt of a non-JSON error body (an HTML page, plain text)."""
    text = printable(raw[:400].decode("utf-8", "replace"))
    return f": {text}" if text else ""
