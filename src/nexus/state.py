"""What the running server holds, shared by every endpoint through the ``App``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nexus.config import Config
from nexus.health import HealthChecker
from nexus.metrics import Metrics
from nexus.quality import QualityTracker
from nexus.records import Recorder
from nexus.registry import Registry
from nexus.routing.router import Router
from nexus.transport import Transport

if TYPE_CHECKING:
    from nexus.budget import Budget
    from nexus.discovery import Discovery  # zeroconf is imported only when discovery is on
    from nexus.fleet.service import Fleet
    from nexus.pipeline.wait import Queue
    from nexus.store import Store
    from nexus.tenants.service import Tenants


@dataclass(eq=False)
class AppState:
    config: Config
    registry: Registry
    router: Router
    recorder: Recorder
    health: HealthChecker
    metrics: Metrics
    quality: QualityTracker
    transport: Transport  # to backends, for traffic (probes have their own)
    discovery: Discovery | None = None  # set when discovery.enabled
    queue: Queue | None = None  # set when queuing.enabled
    store: Store | None = None  # opened when a feature needs it (a budget)
    budget: Budget | None = None  # set when budget.monthly_limit
    tenants: Tenants | None = None  # set when auth.enabled
    fleet: Fleet | None = None  # always set by build_app (lifecycle works with fleet off)
    started: float = field(default_factory=time.monotonic)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    requests: set[asyncio.Task[object]] = field(default_factory=set)  # proxied, in flight
    in_flight: int = 0
    draining: bool = False  # SIGTERM: new proxied requests get 503
    cutting: bool = False  # the grace period is over: what is left is being cancelled

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started
