"""uvicorn's httptools protocol, with what a server facing hostile clients needs and it lacks.

* A request head must arrive whole within ``head_timeout`` seconds of the connection
  opening (or of its first byte, on a kept-alive connection): otherwise 408 and the
  connection is closed. Without this, a client that trickles its head (slowloris) or
  never sends one holds a connection for ever.
* A head may be at most ``MAX_HEAD`` bytes: beyond, 431. uvicorn buffers any size.
* Unparseable HTTP is answered in OpenAI's error shape (uvicorn: a text/plain page), and
  quietly: garbage from a client is not an error of ours worth a warning.

These override methods of uvicorn's ``HttpToolsProtocol``; the class is handed to
``uvicorn.Config(http=...)``, the documented way to choose a protocol. ``check()`` runs at
start-up and fails with a clear message if a uvicorn upgrade moved what is overridden.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from nexus.asgi.io import SERVER
from nexus.errors import NexusError

MAX_HEAD = 64 * 1024
_HOOKS = (
    "connection_made",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "connection_lost",
    "send_400_response",
)


class NexusProtocol(HttpToolsProtocol):
    head_timeout = 30.0  # set per server by ``protocol_class``

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD and not self.transport.is_closing():
            self._refuse(431, "request head is larger than 64 KiB")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:
            self._in_head = True
            self._head_bytes = 0
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "the request could not be parsed as HTTP/1.1")

    # -- ours -------------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = asyncio.get_running_loop().call_later(
            self.head_timeout, self._head_expired
        )

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"request head not received within {self.head_timeout:g}s")

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
        self._disarm()
        self.transport.close()


def protocol_class(head_timeout: float) -> type[NexusProtocol]:
    """The protocol for one server, with its own head timeout."""
    return type("NexusProtocol", (NexusProtocol,), {"head_timeout": head_timeout})


def check() -> None:
    """Fail loudly at start-up if the uvicorn installed no longer has what we override."""
    missing = [name for name in _HOOKS if not callable(getattr(HttpToolsProtocol, name, None))]
    if missing:
        raise RuntimeError(
            f"this uvicorn's HttpToolsProtocol lacks {', '.join(missing)}: "
            "install the uvicorn version pyproject.toml names"
        )
