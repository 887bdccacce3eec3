"""HTTP/1.1 to a backend: one keep-alive connection, one request at a time.

Why our own and not aiohttp's client: on the proxy's hot path, ``ClientSession`` cost
about as much CPU per request as everything else Nexus does (per-request tasks, tracing
hooks, header and cookie machinery, URL objects). Talking to a backend needs much less:
write one request, parse one response head, hand the body out as it arrives. Probes, which
are rare and varied, still use aiohttp.

Errors, all with a short reason as ``str(exc)`` that never contains request data::

    UpstreamError           base
    ├── ConnectError        DNS, refused, TLS or other failure before the request was sent
    ├── InvalidHeader       a header value to send holds a line break (never sent)
    ├── Disconnected        the backend closed the connection before the answer was whole
    └── MalformedResponse   not HTTP/1.x, bad framing, oversized head, unknown encoding
    ConnectTimeout          (a TimeoutError) no connection within the connect timeout

A wait for bytes that exceeds its timeout raises the builtin ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import zlib
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from nexus.proxy.pool import Pool

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4 * 1024
# Flow control: when the client reads a stream slower than the backend writes it, stop
# reading the backend socket instead of buffering without bound.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,18}")
_NEED_LINE, _NEED_CRLF, _TRAILERS = -1, -2, -3  # chunked decoder states besides "n left"
LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2  # how a body's end is known


class UpstreamError(Exception):
    """The exchange with a backend failed."""


class ConnectError(UpstreamError):
    pass


class InvalidHeader(UpstreamError):
    pass


class Disconnected(UpstreamError):
    def __init__(self, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered  # some of the answer had arrived (so never resend)


class MalformedResponse(UpstreamError):
    pass


class ConnectTimeout(TimeoutError):
    pass


def describe(exc: BaseException) -> str:
    """A short reason for a failed exchange with a backend (never request data)."""
    if isinstance(exc, UpstreamError):
        return str(exc)
    text = str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)
    return (text or type(exc).__name__)[:200]


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Connection(asyncio.Protocol):
    """A socket to one backend origin; bytes pile up in ``buf`` until a reader takes them."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False  # the backend closed, or the socket is gone
        self.paused = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    # -- for readers ----------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, seconds: float | None) -> None:
        """Until more bytes arrive or the backend closes; ``TimeoutError`` after ``seconds``.

        A bare timer handle rather than ``asyncio.timeout()``: this runs for every read.
        """
        if self.closed:
            return
        if self.paused:
            # Paused only while nobody wanted the bytes; a reader waiting for more (a
            # large answer read whole) needs the socket read again.
            self.paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        waiter = self.loop.create_future()
        self._waiter = waiter
        if seconds is None:
            await waiter
            return
        timer = self.loop.call_later(seconds, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def take(self, n: int) -> bytes:
        data = bytes(self.buf[:n])
        self.discard(n)
        return data

    def discard(self, n: int) -> None:
        """Drop the first ``n`` buffered bytes (read); reading resumes once few are left."""
        del self.buf[:n]
        if self.paused and len(self.buf) < LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and not self.buf
            and not self.paused
            and (self.transport is not None and not self.transport.is_closing())
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def read_response(conn: Connection, seconds: float) -> Response:
    """Parse the response head (skipping 1xx); the body is left for the Response."""
    while True:
        end = conn.buf.find(b"\r\n\r\n")
        while end < 0:
            if len(conn.buf) > MAX_HEAD:
                raise MalformedResponse("response head is larger than 64 KiB")
            if conn.closed:
                raise Disconnected(
                    "backend closed the connection before answering", answered=bool(conn.buf)
                )
            await conn.wait(seconds)
            end = conn.buf.find(b"\r\n\r\n")
        head = conn.take(end + 4)
        status, headers, http10 = _parse_head(head[:end])
        if status >= 200:
            return Response(conn, status, headers, http10)
        if status == 101:
            raise MalformedResponse("backend switched protocols")


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    lines = head.split(b"\r\n")
    first = lines[0]
    if (
        not first.startswith(b"HTTP/1.")
        or len(first) < 12
        or first[8:9] != b" "
        or not first[9:12].isdigit()
        or first[12:13] not in (b"", b" ")
    ):
        raise MalformedResponse("backend did not answer in HTTP/1.x")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1:] in b" \t" or name[:1] in b" \t":
            raise MalformedResponse("backend sent a malformed header line")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return int(first[9:12]), headers, first[7:8] == b"0"


class Response:
    """Status and headers of an answer; its body is read with ``read`` / ``read_chunk``.

    ``release()`` must be called once done: it returns the connection to the pool when
    the body was read whole and the backend keeps connections alive, else closes it.
    """

    __slots__ = (
        "_chunk_left",
        "_decoder",
        "_keep_alive",
        "_left",
        "_mode",
        "_released",
        "conn",
        "done",
        "headers",
        "status",
    )

    def __init__(self, conn: Connection, status: int, headers: dict[str, str], http10: bool):
        self.conn = conn
        self.status = status
        self.headers = headers
        self.done = False
        self._released = False
        self._chunk_left = _NEED_LINE
        self._left = 0
        option = headers.get("connection", "").lower()
        self._keep_alive = "keep-alive" in option if http10 else "close" not in option
        self._decoder = _decoder(headers.get("content-encoding"))
        coding = headers.get("transfer-encoding")
        # RFC 9112 6.3: no body for 204/304; chunked (as the last coding) beats a
        # Content-Length; any other coding, or neither header, ends with the connection.
        if status in (204, 304):
            self._mode = LENGTH
        elif coding is not None:
            chunked = coding.rsplit(",", 1)[-1].strip().lower() == "chunked"
            self._mode = CHUNKED if chunked else UNTIL_CLOSE
        elif "content-length" in headers:
            self._mode = LENGTH
            self._left = _content_length(headers["content-length"])
        else:
            self._mode = UNTIL_CLOSE
        if self._mode == UNTIL_CLOSE:
            self._keep_alive = False
        self.done = self._mode == LENGTH and self._left == 0

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    async def read(self, seconds: float | None, limit: int | None = None) -> bytes:
        """The whole body (decoded), or its first ``limit`` bytes."""
        conn, left = self.conn, self._left
        if self._mode == LENGTH and self._decoder is None and limit is None:
            while len(conn.buf) < left:  # the common case: wait for it all, take it once
                if conn.closed:
                    raise Disconnected("backend closed the connection mid-body", answered=True)
                await conn.wait(seconds)
            self._left = 0
            self.done = True
            return conn.take(left)
        parts: list[bytes] = []
        size = 0
        while not self.done and (limit is None or size < limit):
            piece = await self.read_chunk(seconds)
            parts.append(piece)
            size += len(piece)
        body = b"".join(parts)
        return body if limit is None else body[:limit]

    async def read_chunk(self, seconds: float | None) -> bytes:
        """The next part of the body as it arrives (decoded); ``b""`` once it is whole."""
        conn = self.conn
        while not self.done:
            if self._mode == LENGTH:
                data = self._take_length()
            elif self._mode == CHUNKED:
                data = self._take_chunks()
            else:
                data = self._take_until_close()
            if data or self.done:
                return self._decode(data)
            if conn.closed:
                raise Disconnected("backend closed the connection mid-body", answered=True)
            await conn.wait(seconds)
        return b""

    def _take_length(self) -> bytes:
        n = min(self._left, len(self.conn.buf))
        self._left -= n
        self.done = self._left == 0
        return self.conn.take(n) if n else b""

    def _take_until_close(self) -> bytes:
        conn = self.conn
        data = conn.take(len(conn.buf)) if conn.buf else b""
        self.done = conn.closed and not conn.buf
        return data

    def _take_chunks(self) -> bytes:
        """Decode as many chunks as ``buf`` holds (chunked transfer coding, RFC 9112 7.1)."""
        buf, pos, out = self.conn.buf, 0, []
        while True:
            left = self._chunk_left
            if left > 0:
                n = min(left, len(buf) - pos)
                if n == 0:
                    break
                out.append(bytes(buf[pos : pos + n]))
                pos += n
                self._chunk_left = _NEED_CRLF if n == left else left - n
                continue
            if left == _NEED_CRLF:
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise MalformedResponse("backend sent a malformed chunked body")
                pos += 2
                self._chunk_left = _NEED_LINE
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_CHUNK_LINE:
                    raise MalformedResponse("backend sent a malformed chunked body")
                break
            line, pos = bytes(buf[pos:end]), end + 2
            if left == _TRAILERS:
                if not line:  # the blank line after the trailers ends the body
                    self.done = True
                    break
                continue
            size = line.partition(b";")[0].strip(b" \t")
            if not _HEX.fullmatch(size):
                raise MalformedResponse("backend sent a malformed chunked body")
            self._chunk_left = int(size, 16) or _TRAILERS
        self.conn.discard(pos)
        return b"".join(out)

    def _decode(self, data: bytes) -> bytes:
        if self._decoder is None:
            return data
        try:
            data = self._decoder.decompress(data)
            return data + self._decoder.flush() if self.done else data
        except zlib.error:
            raise MalformedResponse("backend sent a body that does not decompress") from None

    def release(self) -> None:
        """Give the connection back (whole body read) or close it (anything else)."""
        if self._released:
            return
        self._released = True
        conn = self.conn
        if not self.done and self._mode == CHUNKED and conn.buf:
            # A stream's reader stops at its last event; the chunked terminator that
            # follows has often arrived already. Taking it keeps the connection reusable.
            with contextlib.suppress(MalformedResponse):
                self._take_chunks()
        if self.done and self._keep_alive and conn.reusable:
            conn.pool.put(conn)
        else:
            conn.close()


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(text := values.pop()):
        raise MalformedResponse("backend sent an invalid Content-Length")
    return int(text)


def _decoder(coding: str | None) -> zlib._Decompress | None:
    coding = (coding or "").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # 32: detect gzip or zlib header
    raise MalformedResponse(f"backend used an unsupported Content-Encoding: {coding[:40]}")
