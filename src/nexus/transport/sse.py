"""Incremental Server-Sent Events framing, linear in what it is fed and bounded.

Upstream reads arrive in arbitrary pieces: an event split across reads, several events in
one read, ``\\r\\n`` or ``\\n`` line endings (a ``\\r\\n`` pair may itself be split). The
parser yields whole event blocks, normalised to ``\\n`` line endings and without their
terminating blank line, so the relay can forward them one by one, re-framed exactly once.

A backend is untrusted: each byte is scanned once (a partial event is never rescanned from
its start), and an event larger than ``max_event`` bytes ends the stream with
:class:`EventTooLarge` instead of growing memory without bound.
"""

from __future__ import annotations

DONE = b"[DONE]"
DEFAULT_MAX_EVENT = 4 * 1024 * 1024


class EventTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"stream event larger than {limit} bytes")


class SSEParser:
    __slots__ = ("_buf", "_pending_cr", "max_event")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._buf = bytearray()
        self._pending_cr = False
        self.max_event = max_event

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return the event blocks it completed (possibly none)."""
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                # Might be the first half of "\r\n": decide when the next read comes.
                chunk = chunk[:-1]
                self._pending_cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        if not buf:
            # The common case: nothing pending, so the chunk is searched alone, uncopied.
            end = chunk.rfind(b"\n\n")
            if end < 0:
                return self._keep(chunk)
            self._keep(chunk[end + 2 :])
            return _split(chunk[:end])
        start = max(len(buf) - 1, 0)  # a "\n\n" may straddle the old and the new bytes
        buf += chunk
        end = buf.rfind(b"\n\n", start)
        if end < 0:
            return self._keep(b"")
        events = _split(bytes(buf[:end]))
        del buf[: end + 2]
        self._check()
        return events

    def _keep(self, rest: bytes) -> list[bytes]:
        self._buf += rest
        self._check()
        return []

    def _check(self) -> None:
        if len(self._buf) > self.max_event:
            self._buf.clear()
            raise EventTooLarge(self.max_event)

    def close(self) -> bytes | None:
        """At end of stream: the last event, when the upstream did not terminate it."""
        rest = bytes(self._buf).strip(b"\n")
        self._buf.clear()
        self._pending_cr = False
        return rest or None


class NDJSONParser:
    """Newline-delimited JSON (Ollama's streams), with the same interface and bounds as
    :class:`SSEParser`: each line is one event block."""

    __slots__ = ("_buf", "max_event")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._buf = bytearray()
        self.max_event = max_event

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        start = len(buf)
        buf += chunk
        end = buf.rfind(b"\n", start)
        if end < 0:
            if len(buf) > self.max_event:
                buf.clear()
                raise EventTooLarge(self.max_event)
            return []
        lines = [line.strip() for line in bytes(buf[:end]).split(b"\n")]
        del buf[: end + 1]
        if len(buf) > self.max_event:
            buf.clear()
            raise EventTooLarge(self.max_event)
        return [line for line in lines if line]

    def close(self) -> bytes | None:
        rest = bytes(self._buf).strip()
        self._buf.clear()
        return rest or None


def _split(text: bytes) -> list[bytes]:
    return [p.strip(b"\n") for p in text.split(b"\n\n") if p.strip(b"\n")]


def event_data(block: bytes) -> bytes | None:
    """The ``data`` payload of an event block (multi-line data joined by ``\\n``), or None
    for a comment-only block (keep-alive ``: ping``) or one without data."""
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]  # the common case, without splitting
    data = [
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in block.split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(data) if data else None


def event_name(block: bytes) -> bytes | None:
    """The ``event:`` field of a block (Anthropic names every event), or None."""
    for line in block.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip()
    return None


def frame(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
