"""Wait: where a request would queue for a busy backend. Nothing waits yet: every request
goes straight on to forward."""

from __future__ import annotations

from nexus.pipeline.exchange import Exchange


async def wait(ex: Exchange) -> None:
    return None
