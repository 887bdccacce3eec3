"""``scope["extensions"]["nexus.client"]``: what the connection offers the app beyond ASGI.

* **The client left.** ASGI says so only through ``receive()``, which an app serving a
  request does not call once the body is read; watching it would cost a task per request.
  The protocol knows at once (``connection_lost``) and calls ``on_gone`` if the answer was
  not complete.
* **A body read without a round of ``receive()``.** Usually the whole body came with the
  head; :meth:`ClientLink.body` hands it over as ``receive()`` would, minus the message.
* **A whole answer in one write.** Through ASGI an answer is two messages, each checked and
  written on its own: two ``write()`` calls (two TCP segments) and two regex searches per
  header. :meth:`ClientLink.answer` writes head and body at once and checks all the names in
  one search and all the values in another. It is the same answer, byte for byte, except
  that it arrives in one piece.

``body`` and ``answer`` do what uvicorn's ``RequestResponseCycle.receive`` and ``send`` do
for those messages, on the cycle's own state; :func:`check` proves at start-up that the
installed uvicorn still has that state.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)

from nexus.asgi import Headers

# What answer() reads and writes on the cycle; check() verifies a fresh cycle has them all.
CYCLE_STATE = (
    "body",
    "more_body",
    "flow",
    "disconnected",
    "response_started",
    "response_complete",
    "keep_alive",
    "waiting_for_100_continue",
    "default_headers",
    "transport",
    "message_event",
    "on_response",
    "scope",
)


class ClientLink:
    __slots__ = ("_cycle", "gone", "on_gone")

    def __init__(self) -> None:
        self.gone = False
        self.on_gone: Callable[[], object] | None = None
        # Weak: the cycle holds the scope, which holds this link; a strong reference would
        # make every request a reference cycle, freed only by the garbage collector.
        self._cycle: weakref.ref[RequestResponseCycle] | None = None

    def attach(self, cycle: RequestResponseCycle) -> None:
        """The request's cycle, once uvicorn made it."""
        self._cycle = weakref.ref(cycle)

    @property
    def cycle(self) -> RequestResponseCycle | None:
        return self._cycle() if self._cycle is not None else None

    def lost(self) -> None:
        self.gone = True
        if self.on_gone is not None:
            self.on_gone()

    def body(self) -> bytes | None:
        """The whole request body if it has all arrived and none of it was read yet; else
        None (the caller reads it with ``receive()``, which waits for the rest)."""
        cycle = self.cycle
        if cycle is None or cycle.more_body or cycle.disconnected or cycle.response_complete:
            return None
        body = bytes(cycle.body)
        cycle.body = bytearray()
        cycle.message_event.clear()
        cycle.flow.resume_reading()
        return body

    def answer(self, status: int, headers: Headers, body: bytes) -> bool:
        """Writes the whole answer; False when it must go through ASGI ``send`` instead
        (the transport is paused, which only ``send`` waits out; or a HEAD request)."""
        cycle = self.cycle
        if cycle is None or cycle.response_started or cycle.scope["method"] == "HEAD":
            return False
        if cycle.disconnected:
            return True  # as send(): nobody to write to
        if cycle.flow.write_paused:
            return False
        headers = cycle.default_headers + headers
        if HEADER_RE.search(b"-".join([name for name, _ in headers])):
            raise RuntimeError("Invalid HTTP header name.")
        # A tab is allowed in a value and in none of the others' forbidden characters.
        if HEADER_VALUE_RE.search(b"\t".join([value for _, value in headers])):
            raise RuntimeError("Invalid HTTP header value.")
        content = [STATUS_LINE[status]]  # (names are lower case, as Nexus writes them all)
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        cycle.transport.write(b"".join(content))
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()
        return True


def check() -> list[str]:
    """What a fresh cycle of the installed uvicorn lacks of what ``answer`` uses."""
    try:
        cycle: Any = RequestResponseCycle(
            scope={},  # type: ignore[typeddict-item]
            transport=None,  # type: ignore[arg-type]
            flow=None,  # type: ignore[arg-type]
            logger=None,  # type: ignore[arg-type]
            access_logger=None,  # type: ignore[arg-type]
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )
    except TypeError as exc:
        return [f"RequestResponseCycle({exc})"]
    return [name for name in CYCLE_STATE if not hasattr(cycle, name)]
