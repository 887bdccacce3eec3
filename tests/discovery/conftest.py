"""Fixtures for the discovery tests: real mDNS adverts, on loopback only.

Every zeroconf instance here (the advertiser below, and Nexus through
``[discovery] interfaces = ["127.0.0.1"]``) binds 127.0.0.1: multicast goes out on ``lo``
only (IP_MULTICAST_IF = 127.0.0.1), nothing is sent on any other interface.
Service instance names carry a random tag so concurrent test runs on one host (which share
loopback multicast) never mistake each other's adverts for their own.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from nexus.registry import Backend, BackendStatus
from tests.helpers import Nexus, wait_until

LOOPBACK = "127.0.0.1"


def discovery_section(grace: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "interfaces": [LOOPBACK], "grace_period_seconds": grace, **extra}


class Advertiser:
    """Registers services the way an LLM server on the LAN would, on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.aiozc = AsyncZeroconf(interfaces=[LOOPBACK])
        self.tag = uuid.uuid4().hex[:8]

    def name(self, label: str) -> str:
        return f"{label}-{self.tag}"

    async def register(
        self,
        label: str,
        port: int,
        service_type: str = "_ollama._tcp.local.",
        txt: Mapping[str, str] | None = None,
        addresses: tuple[str, ...] = (LOOPBACK,),
        server: str | None = None,
    ) -> AsyncServiceInfo:
        instance = self.name(label)
        info = AsyncServiceInfo(
            service_type,
            f"{instance}.{service_type}",
            addresses=[ipaddress.ip_address(a).packed for a in addresses],
            port=port,
            properties=dict(txt or {}),
            server=server or f"{instance}.local.",
        )
        # Unique names: skip the ~1 s of conflict probing, just announce.
        broadcast = await self.aiozc.async_register_service(info, cooperating_responders=True)
        await broadcast
        return info

    async def unregister(self, info: AsyncServiceInfo) -> None:
        await (await self.aiozc.async_unregister_service(info))

    async def close(self) -> None:
        await self.aiozc.async_close()


@pytest.fixture
async def advertiser() -> AsyncIterator[Advertiser]:
    adv = Advertiser()
    try:
        yield adv
    finally:
        await adv.close()


def by_service(nexus: Nexus, service: str) -> Backend | None:
    """The backend discovered from the mDNS service instance ``service`` (full name)."""
    for backend in nexus.state.registry:
        if backend.metadata.get("mdns_service", "").lower() == service.lower():
            return backend
    return None


async def wait_healthy(nexus: Nexus, service: str, timeout: float = 8.0) -> Backend:
    def healthy() -> Backend | None:
        backend = by_service(nexus, service)
        return backend if backend and backend.status is BackendStatus.HEALTHY else None

    backend: Backend = await wait_until(healthy, timeout=timeout, what=f"{service} healthy")
    return backend


async def wait_log(
    caplog: pytest.LogCaptureFixture,
    *fragments: str,
    level: int = logging.INFO,
    timeout: float = 8.0,
) -> logging.LogRecord:
    def found() -> logging.LogRecord | None:
        for record in caplog.records:
            text = record.getMessage()
            if record.levelno >= level and all(f in text for f in fragments):
                return record
        return None

    record: logging.LogRecord = await wait_until(
        found, timeout=timeout, what=f"log line {fragments}"
    )
    return record
