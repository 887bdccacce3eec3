"""``build_app(config)``: the one place the server is wired, for ``nexus serve`` and tests.

Start-up order: upstream client, then health probes (backends come up in the background,
never blocking start-up). Shutdown order is the reverse and runs after aiohttp has stopped
accepting and drained in-flight requests (see ``nexus.server``).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from nexus import dashboard, logs, protocol
from nexus.api import routes
from nexus.api.common import errors_middleware
from nexus.backends import ProbeClient, make_adapters
from nexus.config import Config
from nexus.health import HealthChecker
from nexus.metrics import Metrics
from nexus.proxy.forward import Forwarder
from nexus.quality import QualityTracker
from nexus.records import Recorder
from nexus.registry import Backend, DiscoverySource, Registry
from nexus.routing.router import Router
from nexus.state import STATE, AppState
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
            tls=TLS(verify=b.tls_verify, ca_file=b.ca_file),
            discovery_source=DiscoverySource.STATIC,
        )
        for b in config.backends
    ]
    if not config.has_file and not backends:
        # Zero-config: a single machine running Ollama just works, even without multicast.
        backends.append(Backend(name="local-ollama", url=OLLAMA_DEFAULT_URL, type="ollama"))
    return backends


def _probe_pool(config: Config) -> Pool:
    # Probes have a pool of their own (so they never queue behind traffic), and a small
    # answer limit: a model listing has no business being larger.
    seconds = config.health_check.timeout_seconds
    connect = min(seconds, config.server.connect_timeout_seconds)
    return Pool(connect, seconds, max_body=PROBE_MAX_BODY)


def build_app(config: Config) -> web.Application:
    registry = Registry()
    for backend in initial_backends(config):
        registry.add_backend(backend)
    quality = QualityTracker()
    metrics = Metrics(registry, config.routing)
    router = Router(registry, config.routing, quality)
    probes = ProbeClient(_probe_pool(config), config.health_check.timeout_seconds)
    health = HealthChecker(
        registry, config.health_check, make_adapters(), probes, observers=[metrics.observe_probe]
    )
    forwarder = Forwarder(config, registry, router, health)
    recorder = Recorder()
    recorder.sinks += [metrics.record, quality.record, logs.log_request]
    state = AppState(
        config=config,
        registry=registry,
        router=router,
        forwarder=forwarder,
        recorder=recorder,
        health=health,
        metrics=metrics,
        quality=quality,
    )
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=config.server.max_request_bytes
    )
    app[STATE] = state
    app.add_routes(routes())
    app.on_response_prepare.append(protocol.set_server_header)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    if config.discovery.enabled:
        _setup_discovery(app, state)
    dashboard.setup(app)
    return app


def _setup_discovery(app: web.Application, state: AppState) -> None:
    # zeroconf is imported only when discovery is on: it is the heaviest import we have.
    from nexus.discovery import Discovery

    discovery = state.discovery = Discovery(state.registry, state.config.discovery, state.health)

    async def start(_: web.Application) -> None:
        await discovery.start()

    async def stop(_: web.Application) -> None:
        await discovery.stop()

    # After the health checker started (probes for found backends), before it stops.
    app.on_startup.append(start)
    app.on_cleanup.insert(0, stop)


async def _startup(app: web.Application) -> None:
    state = app[STATE]
    state.background.append(asyncio.create_task(logs.flush_periodically(), name="log-flush"))
    if state.config.logging.log_content:
        log.warning("logging.log_content is on: message content is logged (truncated) at DEBUG")
    await state.health.start()


async def _shutdown(app: web.Application) -> None:
    app[STATE].draining = True


async def _cleanup(app: web.Application) -> None:
    state = app[STATE]
    for task in state.background:
        task.cancel()
    await asyncio.gather(*state.background, return_exceptions=True)
    state.recorder.flush()  # the last requests' records, before the log's last flush
    logs.flush()
    await state.health.stop()
    state.health.client.transport.close()
    state.forwarder.stop()
