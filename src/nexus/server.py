"""``Server``: runs the app built from a ``Config`` under uvicorn until a signal, then shuts
down in order.

Shutdown, on the first SIGTERM or SIGINT:
1. refuse new work: new proxied requests get 503 + Retry-After (``AppState.draining``), so
   clients and load balancers move on at once instead of meeting a closed port;
2. drain: in-flight requests and streams may finish, for ``shutdown_grace_seconds``;
3. cut what is left: each remaining request is cancelled and says so (a stream gets an
   error event; the log records 503 ``shutting_down``);
4. stop listening, close connections, stop probes and discovery, close upstream
   connections; exit 0.
A second signal exits at once (the request log flushed first): the operator has decided
not to wait.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time

import uvicorn

from nexus import logs
from nexus.app import App, build_app
from nexus.asgi import protocol
from nexus.config import Config
from nexus.pipeline.wait import shutting_down
from nexus.state import AppState

log = logging.getLogger("nexus")
CUT_SECONDS = 2.0  # how long cancelled requests get to write their error event


class Server:
    def __init__(self, config: Config) -> None:
        protocol.check()
        self.config = config
        self.app: App = build_app(config)
        self._stop = asyncio.Event()
        self._signals = 0
        self._uvicorn: uvicorn.Server | None = None
        self.port: int | None = None

    @property
    def state(self) -> AppState:
        return self.app.state

    def handle_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now")
            self.state.recorder.flush()  # records still queued become their log lines
            logs.flush()
            os._exit(1)
        log.info(
            "shutting down: finishing in-flight requests (up to %gs)",
            self.config.server.shutdown_grace_seconds,
        )
        self.begin_drain()
        self._stop.set()

    def begin_drain(self) -> None:
        """New requests get 503; so do queued ones, at once (they never started: a client
        can retry them elsewhere now rather than after the grace period)."""
        state = self.state
        state.draining = True
        if state.queue is not None and state.queue.closed is None:
            state.queue.close(shutting_down)

    async def serve(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_signal)
        started = time.perf_counter()
        await self.start(sock)
        log.info("ready in %.0f ms", (time.perf_counter() - started) * 1000)
        try:
            await self._stop.wait()
            await self.drain()
        finally:
            await self.stop()
            log.info("stopped")

    async def start(self, sock: socket.socket | None = None) -> None:
        cfg = self.config.server
        if sock is None:
            sock = _listen(cfg.host, cfg.port)
        config = uvicorn.Config(
            self.app,
            interface="asgi3",
            http=protocol.protocol_class(cfg.client_timeout_seconds),
            ws="websockets-sansio",
            ws_max_size=4096,  # dashboard viewers have nothing to say
            lifespan="off",  # the app starts and stops with the Server, in order
            access_log=False,  # the request log line says more, once
            log_config=None,
            server_header=False,  # every answer says "nexus" itself
            proxy_headers=False,  # the peer address is the peer's: no X-Forwarded-For trust
            # An idle keep-alive connection is closed after this; a slow head or body is
            # bounded by the protocol's head timer and the body read timeout.
            timeout_keep_alive=max(1, round(cfg.client_timeout_seconds)),
            timeout_graceful_shutdown=1,
            backlog=1024,
        )
        config.load()
        self._uvicorn = uvicorn.Server(config)
        await self.app.startup()
        self._uvicorn.lifespan = config.lifespan_class(config)
        await self._uvicorn.startup(sockets=[sock])
        self.port = sock.getsockname()[1]
        self._announce(cfg.host, self.port)

    async def drain(self) -> None:
        """Until in-flight requests are done or the grace period is over; then cut the rest."""
        state = self.state
        deadline = time.monotonic() + self.config.server.shutdown_grace_seconds
        # Polling is fine here: it runs once per process life, for a few seconds at most.
        while state.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if state.requests:
            log.warning("grace period over: cutting %d request(s)", len(state.requests))
            state.cutting = True
            for task in list(state.requests):
                task.cancel()
            await asyncio.wait(list(state.requests), timeout=CUT_SECONDS)

    async def stop(self) -> None:
        """Stop listening, close every connection, then stop the app's services."""
        self.begin_drain()
        await self.app.close_viewers()
        server = self._uvicorn
        if server is not None:
            await server.shutdown()
            # uvicorn cancels what outlived its own grace second but does not wait for it.
            tasks = list(server.server_state.tasks)
            if tasks:
                await asyncio.wait(tasks, timeout=CUT_SECONDS)
        await self.app.shutdown()

    def _announce(self, host: str, port: int) -> None:
        shown = "localhost" if host in ("0.0.0.0", "::", "") else host
        names = ", ".join(f"{b.name} ({b.url})" for b in self.state.registry) or "none yet"
        log.info("Nexus listening on http://%s:%s", host, port)
        base = f"http://{shown}:{port}"
        log.info("dashboard: %s/  OpenAI API: %s/v1  health: %s/health", base, base, base)
        log.info(
            "backends: %s%s",
            names,
            "" if self.config.has_file else " (no config file: using defaults)",
        )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # and IPv4, as "0.0.0.0"
    sock.bind((host or "0.0.0.0", port))
    sock.set_inheritable(True)
    return sock


# The request path allocates a few hundred container objects per request, most freed at
# once by reference counting. At Python's default threshold (a young collection every 700
# allocations) the collector runs every few requests and walks everything in flight:
# 3-4 % of the instructions per request at 32 connections (callgrind). Everything alive
# before serving (modules, config) is frozen out of collections for good.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """For ``nexus serve``'s own process only (a test process keeps Python's defaults)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(config: Config) -> None:
    tune_gc()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional (e.g. Windows)
        asyncio.run(Server(config).serve())
    else:
        uvloop.run(Server(config).serve())
