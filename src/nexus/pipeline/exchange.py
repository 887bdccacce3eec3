"""One proxied request on its way through the stages, and the endpoint it came in on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nexus.asgi import Receive, Scope, Send
from nexus.asgi.io import header
from nexus.records import RequestRecord
from nexus.routing.requirements import Requirements
from nexus.routing.router import Plan

Inspector = Callable[[Any], Requirements]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A proxied endpoint: what it is called in logs and metrics, where it goes upstream,
    and how its requests are checked."""

    name: str  # "chat" | "embeddings" | ...
    path: str  # the upstream path, e.g. /v1/chat/completions
    inspect: Inspector


@dataclass(slots=True, eq=False)
class Exchange:
    scope: Scope
    receive: Receive
    send: Send
    endpoint: Endpoint
    record: RequestRecord
    raw: bytes = b""  # the client's body, as sent
    body: dict[str, Any] = field(default_factory=dict)
    req: Requirements | None = None
    plan: Plan | None = None
    started: bool = False  # the client has the response head: errors now go in-band

    @property
    def authorization(self) -> str | None:
        """The client's own Authorization header (passed on to its local backends)."""
        return header(self.scope, b"authorization")

    @property
    def requirements(self) -> Requirements:
        assert self.req is not None, "plan stage has not run"
        return self.req
