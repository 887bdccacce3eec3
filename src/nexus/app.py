"""``build_app(config)``: the one place the server is wired, for ``nexus serve`` and tests.

A request's way in: uvicorn parses HTTP (``nexus.asgi.protocol``) and calls :class:`App`.
A proxied endpoint (chat, embeddings...) is found by one dict lookup on the path and goes
through the pipeline (``nexus.pipeline``); everything else goes through the cold router
(health, models, stats, metrics, admin, dashboard) or is the dashboard's WebSocket.

Start-up order: health probes (backends come up in the background, never blocking
start-up), the dashboard's broadcaster, discovery. Shutdown is the reverse, and runs after
the server stopped accepting and drained in-flight requests (see ``nexus.server``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from nexus import logs, tokens
from nexus.api import admin, fleet, foreign, proxied, status, tenants
from nexus.api.gate import Gate
from nexus.asgi import Receive, Scope, Send
from nexus.asgi.guards import Sites
from nexus.asgi.io import respond_error
from nexus.asgi.routes import Router
from nexus.backends import ProbeClient, auth, make_adapters
from nexus.budget import Budget
from nexus.config import Config
from nexus.dashboard import Dashboard
from nexus.errors import NexusError
from nexus.fleet.service import Fleet
from nexus.health import HealthChecker
from nexus.metrics import Metrics
from nexus.pipeline import Endpoint, Pipeline
from nexus.pipeline.forward import Forwarder
from nexus.pipeline.plan import Planner
from nexus.pipeline.wait import Queue
from nexus.pricing import Price
from nexus.quality import QualityTracker
from nexus.records import Recorder
from nexus.registry import Backend, DiscoverySource, Registry
from nexus.routing import tiers
from nexus.routing.limits import TokenBucket
from nexus.routing.router import Router as ModelRouter
from nexus.state import AppState
from nexus.store import Store, StoredDemand, open_store
from nexus.tenants.limits import Limiter
from nexus.tenants.service import Tenants
from nexus.transport import TLS, Pool

log = logging.getLogger("nexus")

OLLAMA_DEFAULT_URL = "http://localhost:11434"
PROBE_MAX_BODY = 16 * 1024 * 1024


def initial_backends(config: Config) -> list[Backend]:
    backends = [
        Backend(
            name=b.name,
            url=b.url,
            type=b.type,
            priority=b.priority,
            api_key_env=b.api_key_env,
            context_length=b.context_length or None,
            max_concurrent=b.max_concurrent or None,
            limiter=(
                TokenBucket(b.rate_limit.requests_per_minute, b.rate_limit.burst)
                if b.rate_limit.requests_per_minute
                else None
            ),
            tls=TLS(verify=b.tls_verify, ca_file=b.ca_file),
            zone=b.zone,
            tier=b.tier,
            model_tiers=dict(b.model_tiers),
            scores=b.capabilities.declared(),
            expose=tuple(b.models),
            max_output_tokens=b.max_output_tokens,
            prices={
                model: Price(p.input, p.output, p.cached_input if p.cached_input >= 0 else None)
                for model, p in b.prices.items()
            },
            discovery_source=DiscoverySource.STATIC,
        )
        for b in config.backends
    ]
    if not config.has_file and not backends:
        # Zero-config: a single machine running Ollama just works, even without multicast.
        backends.append(Backend(name="local-ollama", url=OLLAMA_DEFAULT_URL, type="ollama"))
    return backends


class App:
    """The ASGI application: hot paths by dict lookup, the rest by the cold router."""

    def __init__(self, state: AppState, pipeline: Pipeline, dashboard: Dashboard) -> None:
        self.state = state
        self.pipeline = pipeline
        self.dashboard = dashboard
        self.hot: dict[str, Endpoint] = proxied.hot_routes()
        self.router = Router(unmatched=state.metrics.unknown_endpoint)
        proxied.add_routes(self.router)  # so that GET on a hot path is a 405, not a 404
        status.add_routes(self.router, state)
        foreign.ForeignListings(state).add_routes(self.router)
        sites = dashboard.sites
        admin.Admin(state, sites).add_routes(self.router)
        tenants.TenantsAdmin(state, sites).add_routes(self.router)
        assert state.fleet is not None
        fleet.add_routes(self.router, state.fleet, sites)
        dashboard.add_routes(self.router)
        self.gate = Gate(state.tenants) if state.tenants is not None else None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: a proxied request's coroutine is the pipeline's own, one
        # level less on every resume (uvicorn awaits what this returns; interface="asgi3").
        if scope["type"] == "http":
            hot = self.hot.get(scope["path"])
            if hot is not None and scope["method"] == "POST":
                return self.pipeline.handle(hot, scope, receive, send)  # (it checks the key)
        return self._other(scope, receive, send)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self.gate is None or await self._pass(scope, send):
                await self.router(scope, receive, send)
        elif kind == "websocket":
            if scope["path"] == "/ws" and self.gate is not None and not await self._pass(scope):
                await send({"type": "websocket.close", "code": 1008})
            elif scope["path"] == "/ws":
                await self.dashboard.websocket(scope, receive, send)
            else:
                await receive()
                await send({"type": "websocket.close", "code": 1008})

    async def _pass(self, scope: Scope, send: Send | None = None) -> bool:
        """Auth on: whether the caller may reach a cold endpoint; if not, it was answered."""
        assert self.gate is not None
        try:
            instead = self.gate.check(scope)
        except NexusError as exc:
            if send is not None:
                await respond_error(send, exc)
            return False
        if instead is not None and send is not None:
            await instead(send)
            return False
        return True

    async def startup(self) -> None:
        state = self.state
        state.background.append(asyncio.create_task(logs.flush_periodically(), name="log-flush"))
        if state.config.logging.log_content:
            log.warning("logging.log_content is on: message content is logged (truncated) at DEBUG")
        for backend in state.registry:
            if (missing := auth.missing_key(backend)) is not None:
                log.warning("backend %s is unusable: %s", backend.name, missing)
        for warning in tiers.fallback_warnings(state.config):
            log.warning("config: %s", warning)
        if state.store is not None:
            await state.store.open()  # (StartupError: a corrupt or locked file, in one line)
        if state.budget is not None:
            # The tokenizer's encodings load in ~0.5 s and take 40-80 MB: once spend nears
            # the limit (where exact counts decide), in a thread, for the cloud types here.
            providers = sorted({b.type for b in state.registry if b.cloud})
            state.budget.wants_tokenizer = lambda: state.background.append(
                asyncio.create_task(_preload_tokenizers(providers), name="nexus-tokenizer")
            )
            await state.budget.start()
        if state.tenants is not None:
            await state.tenants.start()
        await state.health.start()
        assert state.fleet is not None
        await state.fleet.start()  # after the store opened: it reads the demand history
        await self.dashboard.hub.start()
        if state.discovery is not None:
            await state.discovery.start()

    async def close_viewers(self) -> None:
        """First thing at shutdown: open WebSockets must not hold the server up."""
        await self.dashboard.hub.close_viewers()

    async def shutdown(self) -> None:
        state = self.state
        assert state.fleet is not None
        await state.fleet.stop()  # before the store closes and the probe transport with it
        if state.discovery is not None:
            await state.discovery.stop()
        for task in state.background:
            task.cancel()
        await asyncio.gather(*state.background, return_exceptions=True)
        state.recorder.flush()  # the last requests' records, before the log's last flush
        if state.budget is not None:
            await state.budget.stop()  # the last spend written: a clean stop loses nothing
        if state.tenants is not None:
            await state.tenants.stop()  # and the last usage
        if state.store is not None:
            await state.store.close()
        logs.flush()
        await state.health.stop()
        state.health.client.transport.close()
        state.transport.close()
        await self.dashboard.hub.stop()


def shared_limiter(store: Store) -> Limiter:
    """Rate limits every replica enforces together: the store is Redis (``storage.url``)."""
    from nexus.store.redis import RedisStore
    from nexus.store.redis_limits import RedisLimiter

    assert isinstance(store, RedisStore)
    return RedisLimiter(store)


async def _preload_tokenizers(providers: list[str]) -> None:
    await asyncio.to_thread(tokens.preload, providers)


def _probe_pool(config: Config) -> Pool:
    # Probes have a pool of their own (so they never queue behind traffic), and a small
    # answer limit: a model listing has no business being larger.
    seconds = config.health_check.timeout_seconds
    connect = min(seconds, config.server.connect_timeout_seconds)
    return Pool(connect, seconds, max_body=PROBE_MAX_BODY)


def build_app(config: Config) -> App:
    registry = Registry()
    for backend in initial_backends(config):
        registry.add_backend(backend)
    quality = QualityTracker()
    metrics = Metrics(registry, config.routing)
    registry.on_remove += [metrics.forget_backend, lambda b: quality.forget_backend(b.name)]
    queuing = config.queuing
    router = ModelRouter(registry, config.routing, quality, queueing=queuing.enabled)
    registry.on_remove.append(lambda b: router.affinity.forget_backend(b.id))
    probes = ProbeClient(_probe_pool(config), config.health_check.timeout_seconds)
    health = HealthChecker(
        registry, config.health_check, make_adapters(), probes, observers=[metrics.observe_probe]
    )
    server = config.server
    transport = Pool(
        server.connect_timeout_seconds,
        server.request_timeout_seconds,
        max_body=server.max_response_bytes,
    )
    recorder = Recorder()
    recorder.sinks += [metrics.record, quality.record, logs.log_request]
    state = AppState(
        config=config,
        registry=registry,
        router=router,
        recorder=recorder,
        health=health,
        metrics=metrics,
        quality=quality,
        transport=transport,
    )
    if config.discovery.enabled:
        # zeroconf is imported only when discovery is on: it is the heaviest import we have.
        from nexus.discovery import Discovery

        state.discovery = Discovery(registry, config.discovery, health)
    storage = config.storage
    if config.budget.monthly_limit or config.auth.enabled or config.fleet.enabled:
        state.store = open_store(storage)
    if config.budget.monthly_limit:
        assert state.store is not None
        state.budget = Budget(config.budget, state.store, storage.flush_interval_seconds)
        router.budget = metrics.budget = state.budget
        recorder.sinks.append(state.budget.charge)
    if config.auth.enabled:
        assert state.store is not None
        state.tenants = Tenants(
            config.auth,
            state.store,
            flush_seconds=storage.flush_interval_seconds,
            cycle_day=config.budget.billing_cycle_day,
            limiter=shared_limiter(state.store) if storage.url else None,
        )
        recorder.sinks.append(state.tenants.record)
    state.fleet = Fleet(
        config.fleet,
        registry,
        probes.transport,  # the probes' pool: lifecycle calls never queue behind traffic
        vram_gb={b.name: b.vram_gb for b in config.backends if b.vram_gb},
        store=StoredDemand(state.store) if state.store is not None else None,
        changed=health.check_soon,
    )
    if config.fleet.enabled:  # (demand is counted only for the fleet's analysis)
        recorder.sinks.append(state.fleet.observe)
    attempts = 1 + config.routing.max_retries
    if queuing.enabled:
        state.queue = Queue(queuing, registry, router, attempts)
        metrics.queue_depth = state.queue.depth
    forwarder = Forwarder(config, registry, router, health, quality, transport, state.queue)
    planner = Planner(router, config.logging.log_content, queuing)
    pipeline = Pipeline(state, planner, forwarder)
    dashboard = Dashboard(state, Sites(server.allowed_hosts))
    return App(state, pipeline, dashboard)
