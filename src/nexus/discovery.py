"""mDNS discovery (F05). Placeholder until the discovery work lands: does nothing."""

from __future__ import annotations

from nexus.config import DiscoveryConfig
from nexus.health import HealthChecker
from nexus.registry import Registry


class Discovery:
    def __init__(self, registry: Registry, config: DiscoveryConfig, health: HealthChecker) -> None:
        self.registry = registry
        self.config = config
        self.health = health

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
