"""Transport: HTTP/1.1 to backends (keep-alive pool, llhttp parsing, bounded reads).

The forwarder and the probes talk to backends only through :class:`Transport`, so a test
can hand them a double instead of sockets. :class:`Pool` is the real one. Errors are
described in :mod:`nexus.transport.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from nexus.transport.errors import (
    ConnectError,
    ConnectTimeout,
    Disconnected,
    InvalidHeader,
    MalformedResponse,
    TooLarge,
    UpstreamError,
    describe,
)
from nexus.transport.http1 import Response
from nexus.transport.pool import TLS, Pool


class Answer(Protocol):
    """What a caller reads of a backend's answer once its head has arrived."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Names in lower case."""
        ...

    @property
    def content_type(self) -> str: ...

    async def read(
        self, seconds: float | None, limit: int | None = None, *, truncate: bool = False
    ) -> bytes: ...

    async def read_chunk(self, seconds: float | None) -> bytes: ...

    def whole(self) -> bytes | None:
        """The whole body when it is all here already (no read to wait on); else None."""
        ...

    def release(self) -> None: ...


class Transport(Protocol):
    async def request(
        self,
        url: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        tls: TLS | None = None,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> Answer: ...

    def close(self) -> None: ...


__all__ = [
    "TLS",
    "Answer",
    "ConnectError",
    "ConnectTimeout",
    "Disconnected",
    "InvalidHeader",
    "MalformedResponse",
    "Pool",
    "Response",
    "TooLarge",
    "Transport",
    "UpstreamError",
    "describe",
]
