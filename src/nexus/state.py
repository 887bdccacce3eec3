"""What the running server holds, shared by every handler through ``app[STATE]``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from nexus.config import Config
from nexus.health import HealthChecker
from nexus.metrics import Metrics
from nexus.proxy.forward import Forwarder
from nexus.quality import QualityTracker
from nexus.records import Recorder
from nexus.registry import Registry
from nexus.routing.router import Router

if TYPE_CHECKING:
    from nexus.discovery import Discovery  # zeroconf is imported only when discovery is on


@dataclass(eq=False)
class AppState:
    config: Config
    registry: Registry
    router: Router
    forwarder: Forwarder
    recorder: Recorder
    health: HealthChecker
    metrics: Metrics
    quality: QualityTracker
    discovery: Discovery | None = None  # set when discovery.enabled
    started: float = field(default_factory=time.monotonic)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    in_flight: int = 0
    draining: bool = False

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started


STATE = web.AppKey("nexus_state", AppState)
