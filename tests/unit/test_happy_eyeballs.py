"""Connecting races a host's addresses (RFC 8305): when the first address swallows the
connection attempt (a blackhole: no answer, no refusal), the next one is tried after
``STAGGER_SECONDS`` and wins, long before any connect timeout (issue 14)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from nexus.transport.pool import STAGGER_SECONDS, _race


class ResolvingTo:
    """The running loop, except that every host resolves to ``addresses``, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, addresses: list[tuple[str, int]]):
        self._loop = loop
        self.addresses = addresses
        self.asked: list[tuple[str, int]] = []

    async def getaddrinfo(self, host: str, port: int, **_: Any) -> list[Any]:
        self.asked.append((host, port))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in self.addresses]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


@contextmanager
def blackhole() -> Iterator[tuple[str, int]]:
    """A loopback address where a connection attempt hangs: a listener that never accepts,
    its accept queue (backlog 0) already full, so the kernel drops further SYNs."""
    listener = socket.socket()
    filler = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield listener.getsockname()
    finally:
        filler.close()
        listener.close()


@contextmanager
def listening() -> Iterator[socket.socket]:
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server
    finally:
        server.close()


async def test_a_blackholed_first_address_costs_the_stagger_not_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    with blackhole() as dead, listening() as alive:
        # The blackhole is real: a plain connect to it gets nowhere.
        probe = socket.socket()
        probe.setblocking(False)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(loop.sock_connect(probe, dead), 0.3)
        finally:
            probe.close()
        resolver = ResolvingTo(loop, [dead, alive.getsockname()])
        started = loop.time()
        async with asyncio.timeout(3):  # a connect timeout would be seconds; a hang, forever
            sock = await _race(resolver, "dual.example", 8000)  # type: ignore[arg-type]
        elapsed = loop.time() - started
        try:
            assert sock.getpeername() == alive.getsockname()
        finally:
            sock.close()
    assert resolver.asked == [("dual.example", 8000)]
    # The second address was started after the stagger, not at once and not after a timeout.
    assert STAGGER_SECONDS * 0.9 <= elapsed < 2.0, elapsed
