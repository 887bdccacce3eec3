"""Incremental Server-Sent Events framing.

Upstream reads arrive in arbitrary pieces: an event split across reads, several events in
one read, ``\\r\\n`` or ``\\n`` line endings (a ``\\r\\n`` pair may itself be split). The
parser yields whole event blocks, normalised to ``\\n`` line endings and without their
terminating blank line, so the relay can forward them one by one, re-framed exactly once.
"""

from __future__ import annotations

DONE = b"[DONE]"


class SSEParser:
    __slots__ = ("_buf", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._pending_cr = False

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
        buf = self._buf + chunk if self._buf else chunk
        if b"\n\n" not in buf:
            self._buf = buf
            return []
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        return [p.strip(b"\n") for p in parts if p.strip(b"\n")]

    def close(self) -> bytes | None:
        """At end of stream: a last event the upstream did not terminate, if any."""
        rest = self._buf.strip(b"\r\n")
        self._buf = b""
        self._pending_cr = False
        return rest or None


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


def frame(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"
