"""``Server``: runs the app built from a ``Config`` until a signal, then shuts down in order.

Shutdown, on the first SIGTERM or SIGINT:
1. refuse new work: new proxied requests get 503 + Retry-After (``AppState.draining``), so
   clients and load balancers move on at once instead of meeting a closed port;
2. drain: in-flight requests and streams may finish, for ``shutdown_grace_seconds``;
3. stop listening, cancel what is left, stop probes, close upstream connections; exit 0.
A second signal exits at once: the operator has decided not to wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

from aiohttp import web

from nexus import protocol
from nexus.app import build_app
from nexus.config import Config
from nexus.state import STATE

log = logging.getLogger("nexus")


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.app = build_app(config)
        self._stop = asyncio.Event()
        self._signals = 0
        self.port: int | None = None

    def handle_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info(
            "shutting down: finishing in-flight requests (up to %gs)",
            self.config.server.shutdown_grace_seconds,
        )
        self.app[STATE].draining = True
        self._stop.set()

    async def serve(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_signal)
        started = time.perf_counter()
        runner = await self.start(sock)
        log.info("ready in %.0f ms", (time.perf_counter() - started) * 1000)
        try:
            await self._stop.wait()
            await self._drain()
        finally:
            await runner.cleanup()
            log.info("stopped")

    async def _drain(self) -> None:
        state = self.app[STATE]
        deadline = time.monotonic() + self.config.server.shutdown_grace_seconds
        # Polling is fine here: it runs once per process life, for a few seconds at most.
        while state.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if state.in_flight:
            log.warning("grace period over: cancelling %d request(s)", state.in_flight)

    async def start(self, sock: socket.socket | None = None) -> web.AppRunner:
        cfg = self.config.server
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            # A client that goes away cancels its handler, and with it the upstream call.
            handler_cancellation=True,
            # Draining happened before cleanup; this only bounds the stragglers.
            shutdown_timeout=1.0,
            # aiohttp arms this timer when a connection opens and while it idles: a client
            # that trickles its request head (slowloris) is cut when it fires.
            keepalive_timeout=cfg.client_timeout_seconds,
        )
        await runner.setup()
        protocol.install(runner)
        if sock is not None:
            site: web.BaseSite = web.SockSite(runner, sock)
        else:
            site = web.TCPSite(runner, cfg.host, cfg.port, backlog=1024, reuse_address=True)
        await site.start()
        self.port = _bound_port(runner)
        self._announce(cfg.host, self.port)
        return runner

    def _announce(self, host: str, port: int | None) -> None:
        shown = "localhost" if host in ("0.0.0.0", "::", "") else host
        state = self.app[STATE]
        names = ", ".join(f"{b.name} ({b.url})" for b in state.registry) or "none yet"
        log.info("Nexus listening on http://%s:%s", host, port)
        base = f"http://{shown}:{port}"
        log.info("dashboard: %s/  OpenAI API: %s/v1  health: %s/health", base, base, base)
        log.info(
            "backends: %s%s",
            names,
            "" if self.config.has_file else " (no config file: using defaults)",
        )


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def run(config: Config) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional (e.g. Windows)
        asyncio.run(Server(config).serve())
    else:
        uvloop.run(Server(config).serve())
