"""uvicorn's httptools protocol, with what a server facing hostile clients needs and it lacks.

* A request head must arrive whole within ``head_timeout`` seconds of the connection
  opening (or of its first byte, on a kept-alive connection): otherwise 408 and the
  connection is closed. Without this, a client that trickles its head (slowloris) or
  never sends one holds a connection for ever.
* A kept-alive connection idle for ``timeout_keep_alive`` after an answer is closed, as
  uvicorn does, but by the connection's one timer: uvicorn arms a timer of its own after
  every answer and cancels it at the next request (1 % of the CPU of a request).
* A head may be at most ``MAX_HEAD`` bytes: beyond, 431. uvicorn buffers any size.
* Unparseable HTTP is answered in OpenAI's error shape (uvicorn: a text/plain page), and
  quietly: garbage from a client is not an error of ours worth a warning.
* Every request's scope carries a :class:`nexus.asgi.link.ClientLink`: the app learns at
  once that its client left, and may write a whole answer in one go.

These override methods of uvicorn's ``HttpToolsProtocol``; the class is handed to
``uvicorn.Config(http=...)``, the documented way to choose a protocol. ``check()`` runs at
start-up and fails with a clear message if a uvicorn upgrade moved what is overridden.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from nexus.asgi import link
from nexus.asgi.io import SERVER
from nexus.asgi.link import ClientLink
from nexus.errors import NexusError

MAX_HEAD = 64 * 1024
_HOOKS = (
    "connection_made",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "connection_lost",
    "send_400_response",
    "on_response_complete",
)


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request already refused with 431."""


class NexusProtocol(HttpToolsProtocol):
    head_timeout = 30.0  # set per server by ``protocol_class``

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0  # raw bytes read while a head is unfinished (slow heads)
        self._read = 0  # bytes of the read being parsed
        self._bound = 0  # at least the current head's size: the reads since it began
        self._in_head = True
        self._head_since = self.loop.time()
        self._idle_since: float | None = None  # answered, and no next request begun yet
        # One timer per connection, not per request: it re-arms itself for what is left.
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.head_timeout, self._check_head
        )

    def data_received(self, data: bytes) -> None:
        self._read = len(data)
        self._bound += self._read
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD and not self.transport.is_closing():
            self._refuse(431, "request head is larger than 64 KiB")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._bound = self._read  # (the part of this read before the head is not its own)
        self._idle_since = None
        if not self._in_head:
            self._in_head = True
            self._head_bytes = 0
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._bound > MAX_HEAD and self._head_size() > MAX_HEAD:
            # A head that arrived whole in the read that crossed the limit: the check in
            # data_received never saw it unfinished. Refused before the app sees it; raising
            # stops the parser, and send_400_response knows the answer went out.
            self._refuse(431, "request head is larger than 64 KiB")
            raise HeadTooLarge
        client = ClientLink()
        scope: Any = self.scope  # uvicorn types extension values as dicts; ours is an object
        scope["extensions"] = {"nexus.client": client}
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is scope:  # (not on a WebSocket upgrade)
            client.attach(self.cycle)

    def on_response_complete(self) -> None:
        # uvicorn's, but idle time is noted for _check_head instead of a timer armed.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # the next request was read already: it starts now
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            scope: Any = cycle.scope
            scope["extensions"]["nexus.client"].lost()

    def send_400_response(self, msg: str) -> None:
        if self.transport.is_closing():
            return  # answered already (431), or the client is gone
        self._refuse(400, "the request could not be parsed as HTTP/1.1")

    # -- ours -------------------------------------------------------------------------

    def _head_size(self) -> int:
        """The head's own bytes, as parsed (": " and CRLF are 4 per header): counted only
        for a head that came in a read larger than the limit, the one case the check in
        data_received cannot see (a whole head in one read)."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _check_head(self) -> None:
        """The connection's timer: a head too slow gets 408, a connection idle too long
        after an answer is closed; otherwise it is armed again for what is left."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._in_head:
            waited = now - self._head_since
            if waited >= self.head_timeout:
                self._refuse(408, f"request head not received within {self.head_timeout:g}s")
                return
            left = self.head_timeout - waited
        elif self._idle_since is not None:
            idle = now - self._idle_since
            if idle >= self.timeout_keep_alive:
                self.transport.close()
                return
            # (No later than a head timeout: a request may begin meanwhile, and its head is
            # checked at this same timer.)
            left = min(self.timeout_keep_alive - idle, self.head_timeout)
        else:
            left = self.head_timeout
        self._head_timer = self.loop.call_later(left, self._check_head)

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` in OpenAI's shape and close: the connection's framing is lost."""
        error = NexusError(message, code=f"http_{status}")
        error.type = "invalid_request_error"
        body = error.body()
        phrase = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Header Too Large"}
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nserver: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, phrase.get(status, b"Error"), SERVER, len(body), body)
        )
        self._in_head = False
        self.transport.close()


def protocol_class(head_timeout: float) -> type[NexusProtocol]:
    """The protocol for one server, with its own head timeout."""
    return type("NexusProtocol", (NexusProtocol,), {"head_timeout": head_timeout})


def check() -> None:
    """Fail loudly at start-up if the uvicorn installed no longer has what we override."""
    missing = [name for name in _HOOKS if not callable(getattr(HttpToolsProtocol, name, None))]
    missing += [f"RequestResponseCycle.{name}" for name in link.check()]
    if missing:
        raise RuntimeError(
            f"this uvicorn's HTTP protocol lacks {', '.join(missing)}: "
            "install the uvicorn version pyproject.toml names"
        )
