"""A minimal incremental HTTP/1.1 message parser shared by the fake upstream and the
load generator: start line, headers, and a body framed by Content-Length or chunked
transfer encoding (or, for a response, by the end of the connection). No pipelining
beyond handing back the bytes that follow a complete message.

Kept deliberately small and allocation-light: both sides of the benchmark use it, so its
cost is the same for every target and cancels out of the ratios.
"""

from __future__ import annotations

import time

CRLF = b"\r\n"
HEAD_END = b"\r\n\r\n"
MAX_HEAD = 64 * 1024


class ParseError(Exception):
    """The peer sent something this parser does not accept."""


class Message:
    """One parsed message. ``feed`` returns None until complete, then the leftover bytes."""

    __slots__ = (
        "_buf",
        "_chunk_left",
        "_mode",
        "_want",
        "body",
        "first_event_at",
        "head_done",
        "headers",
        "is_response",
        "method",
        "path",
        "status",
    )

    def __init__(self, is_response: bool) -> None:
        self.is_response = is_response
        self._buf = b""
        self.head_done = False
        self.method = ""
        self.path = ""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.first_event_at: float | None = None  # first b"\n\n" in the body (SSE event)
        self._mode = ""  # "length" | "chunked" | "close"
        self._want = 0
        self._chunk_left = -1  # -1: expecting a chunk-size line

    # -- public -----------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes | None:
        """Add bytes; return the bytes after the message once it is complete, else None."""
        buf = self._buf + data if self._buf else data
        self._buf = b""
        if not self.head_done:
            end = buf.find(HEAD_END)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ParseError("header section too large")
                self._buf = buf
                return None
            self._head(buf[:end])
            buf = buf[end + 4 :]
        if self._mode == "length":
            return self._length(buf)
        if self._mode == "chunked":
            return self._chunked(buf)
        self._append(buf)  # "close": everything until the connection ends
        return None

    def eof(self) -> bool:
        """The connection ended: True if that completes the message."""
        return self.head_done and self._mode == "close"

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"

    # -- internals ----------------------------------------------------------------------

    def _head(self, head: bytes) -> None:
        lines = head.split(CRLF)
        start = lines[0].split(b" ", 2)
        if len(start) < 2:
            raise ParseError(f"bad start line {lines[0]!r}")
        if self.is_response:
            self.status = int(start[1])
        else:
            self.method = start[0].decode("latin-1")
            self.path = start[1].decode("latin-1")
        headers = self.headers
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        self.head_done = True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif "content-length" in headers:
            self._mode = "length"
            self._want = int(headers["content-length"])
        elif self.is_response and self.status not in (204, 304) and self.status >= 200:
            self._mode = "close"
        else:
            self._mode = "length"
            self._want = 0

    def _append(self, data: bytes) -> None:
        if not data:
            return
        body = self.body
        body += data
        if self.first_event_at is None and b"\n\n" in body:
            self.first_event_at = time.perf_counter()

    def _length(self, buf: bytes) -> bytes | None:
        need = self._want - len(self.body)
        if len(buf) < need:
            self._append(buf)
            return None
        self._append(buf[:need])
        return buf[need:]

    def _chunked(self, buf: bytes) -> bytes | None:
        pos = 0
        size = len(buf)
        while True:
            if self._chunk_left < 0:
                eol = buf.find(CRLF, pos)
                if eol < 0:
                    self._buf = buf[pos:]
                    return None
                self._chunk_left = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if self._chunk_left == 0:
                    self._chunk_left = -2  # last chunk: trailers until an empty line
            if self._chunk_left == -2:
                if buf.startswith(CRLF, pos):
                    return buf[pos + 2 :]
                end = buf.find(HEAD_END, pos)
                if end < 0:
                    self._buf = buf[pos:]
                    return None
                return buf[end + 4 :]
            # chunk data plus its CRLF
            if size - pos < self._chunk_left + 2:
                self._buf = buf[pos:]
                return None
            self._append(buf[pos : pos + self._chunk_left])
            pos += self._chunk_left + 2
            self._chunk_left = -1


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)
