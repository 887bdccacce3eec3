"""One proxied request on its way through the stages, and the endpoint it came in on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nexus.asgi import Receive, Scope, Send
from nexus.asgi.io import header
from nexus.asgi.link import ClientLink
from nexus.pipeline.inbound import Inbound, NativeOnly
from nexus.records import RequestRecord
from nexus.routing.requirements import Requirements
from nexus.routing.router import Plan
from nexus.tenants.limits import Decision
from nexus.tenants.model import Tenant

Inspector = Callable[[Any], Requirements]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A proxied endpoint: what it is called in logs and metrics, where it goes upstream,
    how its requests are checked, and the client's API when it is not OpenAI's."""

    name: str  # "chat" | "embeddings" | "messages" | ...
    path: str  # the OpenAI path upstream, e.g. /v1/chat/completions
    inspect: Inspector
    route: str = ""  # the path clients call (default: the same)
    inbound: Inbound | None = None  # None: the client speaks OpenAI

    @property
    def client_path(self) -> str:
        return self.route or self.path


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
    client_body: dict[str, Any] | None = None  # the client's own request (foreign APIs)
    client_raw: bytes = b""  # ... and its bytes
    native_only: NativeOnly | None = None  # only a backend speaking the client's API may serve
    native: bool = False  # the current attempt's backend speaks the client's API
    stripped: bool = False  # body and raw hold a fresh context only (cross-zone overflow)
    whole: tuple[Any, bytes] | None = None  # body and raw before they were stripped
    priority: int = 2  # in the queue: 0 critical, 1 high, 2 normal, 3 low
    queue_timeout: float | None = None  # the client's X-Nexus-Queue-Timeout, seconds
    queue_deadline: float | None = None  # set when it first waits (time.monotonic)
    tenant: Tenant | None = None  # whose key it carries (auth on)
    limits: Decision | None = None  # the tenant's rate limit, for the x-ratelimit-* headers
    link: ClientLink | None = None  # the connection's extension (under uvicorn: always)

    @property
    def authorization(self) -> str | None:
        """The client's own Authorization header (passed on to its local backends)."""
        return header(self.scope, b"authorization")

    @property
    def requirements(self) -> Requirements:
        assert self.req is not None, "plan stage has not run"
        return self.req
