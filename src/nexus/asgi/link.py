"""``scope["extensions"]["nexus.client"]``: what the connection offers the app beyond ASGI.

* **The client left.** ASGI says so only through ``receive()``, which an app serving a
  request does not call once the body is read; watching it would cost a task per request.
  The protocol knows at once (``connection_lost``) and calls ``on_gone`` if the answer was
  not complete.
* **A body read without a round of ``receive()``.** Usually the whole body came with the
  head; :meth:`ClientLink.body` hands it over as ``receive()`` would, minus the message.
* **A whole answer in one write.** Through ASGI an answer is two messages, each checked and
  written on its own: two ``write()`` calls (two TCP segments) and two regex searches per
  header. :meth:`ClientLink.answer` writes head and body at once, checks each distinct
  header name once per process and all the values in one pass over the head. It is the
  same answer, byte for byte, except that it arrives in one piece.

``body`` and ``answer`` do what uvicorn's ``RequestResponseCycle.receive`` and ``send`` do
for those messages, on the cycle's own state; :func:`check` proves at start-up that the
installed uvicorn still has that state.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HEADER_RE, STATUS_LINE, RequestResponseCycle

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


# What a header value may not hold (uvicorn's HEADER_VALUE_RE): controls, tab excepted.
CONTROLS = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])
_GOOD_NAMES: set[bytes] = set()  # names found valid: Nexus writes a few dozen distinct ones


def _check_name(name: bytes) -> None:
    if HEADER_RE.search(name):
        raise RuntimeError("Invalid HTTP header name.")
    if len(_GOOD_NAMES) < 1024:
        _GOOD_NAMES.add(name)


def _no_cycle() -> None:
    return None  # (a link not attached to a cycle: none to read or write through)


class ClientLink:
    __slots__ = ("_cycle", "gone", "on_gone")

    def __init__(self) -> None:
        self.gone = False
        self.on_gone: Callable[[], object] | None = None
        # The request's cycle, or None: a weak reference once attached. Weak: the cycle holds
        # the scope, which holds this link; a strong reference would make every request a
        # reference cycle, freed only by the garbage collector.
        self._cycle: Callable[[], RequestResponseCycle | None] = _no_cycle

    def attach(self, cycle: RequestResponseCycle) -> None:
        """The request's cycle, once uvicorn made it."""
        self._cycle = weakref.ref(cycle)

    def lost(self) -> None:
        self.gone = True
        if self.on_gone is not None:
            self.on_gone()

    def body(self) -> bytes | None:
        """The whole request body if it has all arrived and none of it was read yet; else
        None (the caller reads it with ``receive()``, which waits for the rest)."""
        cycle = self._cycle()
        if cycle is None or cycle.more_body or cycle.disconnected or cycle.response_complete:
            return None
        body = bytes(cycle.body)
        cycle.body = bytearray()
        cycle.message_event.clear()
        if cycle.flow.read_paused:  # (a body past uvicorn's high-water mark paused it)
            cycle.flow.resume_reading()
        return body

    def answer(self, status: int, headers: Headers, body: bytes) -> bool:
        """Writes the whole answer; False when it must go through ASGI ``send`` instead
        (the transport is paused, which only ``send`` waits out; or a HEAD request)."""
        cycle = self._cycle()
        if cycle is None or cycle.response_started or cycle.scope["method"] == "HEAD":
            return False
        if cycle.disconnected:
            return True  # as send(): nobody to write to
        if cycle.flow.write_paused:
            return False
        headers = cycle.default_headers + headers
        lines = [STATUS_LINE[status]]  # (names are lower case, as Nexus writes them all)
        for name, value in headers:
            if name not in _GOOD_NAMES:
                _check_name(name)
            lines += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # uvicorn's rule for values (no control character but tab), checked on the whole
        # head at once: each line (status, headers, connection, blank) ends in the one CRLF
        # it may hold, so any other control character in a value shows as more removed.
        ends = len(headers) + (2 if cycle.keep_alive else 3)
        if len(head) - len(head.translate(None, CONTROLS)) != 2 * ends:
            raise RuntimeError("Invalid HTTP header value.")
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        cycle.transport.write(head + body)
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
