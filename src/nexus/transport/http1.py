"""HTTP/1.1 to a backend: one keep-alive connection, one exchange at a time.

Why our own client and not aiohttp's: on the proxy's hot path ``ClientSession`` cost about
as much CPU per request as everything else Nexus does (per-request tasks, tracing hooks,
cookie and URL machinery). Talking to a backend needs much less: write one request, parse
one answer, hand the body out as it arrives. The parsing itself is llhttp's (through
``httptools``, the parser uvicorn uses): framing is where the edge cases live, and a
well-kept C parser gets them right and fast.

Bounds, because a backend is untrusted input: the head is at most ``MAX_HEAD`` bytes; the
socket stops being read while more than ``HIGH_WATER`` body bytes wait for a reader; a
compressed body is inflated at most ``INFLATE_STEP`` bytes at a time, and a body read whole
is refused past its limit (a decompression bomb costs a 502, not the machine's memory).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import cast

import httptools

from nexus.transport.errors import (
    Disconnected,
    MalformedResponse,
    TooLarge,
    UpstreamError,
    parser_error,
)

MAX_HEAD = 64 * 1024
# Flow control: when the client reads a stream slower than the backend writes it, stop
# reading the backend socket instead of buffering without bound.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
INFLATE_STEP = 1024 * 1024  # most decompressed bytes produced per read_chunk call


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Connection(asyncio.Protocol):
    """A socket to one backend origin. llhttp parses every byte as it arrives; body bytes
    (framing removed, content coding not yet) pile up in ``buf`` until a reader takes them."""

    def __init__(self, key: tuple[object, ...]) -> None:
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.buf = bytearray()
        self.closed = False  # the backend closed, or the socket is gone
        self.paused = False
        self.idle_since = 0.0
        self.error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._busy = False  # an exchange is under way: bytes are expected
        self._junk = False  # bytes beyond the answer arrived: never reuse
        self.reset()

    def reset(self) -> None:
        """Forget the previous answer, before sending the next request."""
        self.received = 0  # bytes of this exchange so far
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False  # a final (>= 200) head is complete
        self.complete = False  # the final answer is complete
        self.keep_alive = False
        self.until_close = False  # the body ends when the connection does

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy or self.complete:
            self._junk = True  # nobody asked: whatever it is, this connection is spoiled
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(parser_error(str(exc)))
            return
        if not self.head_done and self.received > MAX_HEAD:
            self._fail(MalformedResponse("response head is larger than 64 KiB"))
            return
        if len(self.buf) > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._lost()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        self.closed = True
        if self.head_done and self.until_close:
            self.complete = True  # a close-delimited body ends here, whole
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        self.close()
        self._wake()

    # -- llhttp callbacks (must not raise: httptools would wrap the error) ------------

    def on_message_begin(self) -> None:
        if self.complete:
            self._junk = True  # a second answer to one request: this connection is spoiled
            return
        self.headers = {}  # a 1xx head's fields are not the answer's

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # trailers of a chunked body: nothing we use
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 or self.complete:
            return  # informational (the real answer follows), or junk after the answer
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        coding = self.headers.get("transfer-encoding")
        chunked = coding is not None and coding.rsplit(",", 1)[-1].strip().lower() == "chunked"
        # RFC 9112 6.3: without a length and not chunked, the body runs to the close.
        self.until_close = (
            status not in (204, 304)
            and not chunked
            and (coding is not None or "content-length" not in self.headers)
        )
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.buf += body

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() >= 200:
            self.complete = True

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
        if self.closed or self.error is not None:
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

    def take(self) -> bytes:
        """Every buffered body byte; reading resumes once the buffer is drained."""
        data = bytes(self.buf)
        self.buf.clear()
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def begin(self, data: bytes) -> None:
        """Send a request: from now on, bytes from the backend are its answer."""
        assert self.transport is not None
        self.reset()
        self._busy = True
        self.transport.write(data)

    def end(self) -> None:
        self._busy = False

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and not self._junk
            and self.error is None
            and not self.buf
            and not self.paused
            and (self.transport is not None and not self.transport.is_closing())
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


Release = Callable[[Connection, bool], None]


async def read_response(conn: Connection, seconds: float, release: Release, limit: int) -> Response:
    """Wait for the answer's head (1xx skipped); the body is left for the Response. On any
    failure (or cancellation) the connection is closed: half an exchange leaves it unusable."""
    try:
        while not conn.head_done:
            if conn.error is not None:
                raise conn.error
            if conn.closed:
                raise Disconnected(
                    "backend closed the connection before answering", answered=conn.received > 0
                )
            await conn.wait(seconds)
    except BaseException:
        conn.close()
        raise
    return Response(conn, release, limit)


class Response:
    """Status and headers of an answer; its body is read with ``read`` / ``read_chunk``.

    ``release()`` must be called once done: it hands the connection back for reuse when
    the body was read whole and the backend keeps connections alive, else closes it.
    """

    __slots__ = (
        "_decoder",
        "_release",
        "_released",
        "_tail",
        "conn",
        "done",
        "headers",
        "limit",
        "status",
    )

    def __init__(self, conn: Connection, release: Release, limit: int) -> None:
        self.conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self.limit = limit  # most bytes ``read`` returns
        self.done = False
        self._release = release
        self._released = False
        coding = conn.headers.get("content-encoding")
        self._decoder = None if coding is None else _decoder(coding)
        self._tail = b""  # compressed input not yet inflated (bounded steps)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    async def read(
        self, seconds: float | None, limit: int | None = None, *, truncate: bool = False
    ) -> bytes:
        """The whole body, decoded. Past ``limit`` bytes (default: the pool's): the first
        ``limit`` bytes when ``truncate``, else ``TooLarge``."""
        limit = self.limit if limit is None else limit
        whole = self.whole(limit)
        if whole is not None:
            return whole
        parts: list[bytes] = []
        size = 0
        while piece := await self.read_chunk(seconds):
            size += len(piece)
            if size > limit:
                if not truncate:
                    raise TooLarge(limit)
                parts.append(piece[: len(piece) - (size - limit)])
                break
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def whole(self, limit: int | None = None) -> bytes | None:
        """The whole body if it came with the head (the usual case), uncompressed and at
        most ``limit`` bytes (default: the pool's); else None, and ``read`` waits for it."""
        limit = self.limit if limit is None else limit
        conn = self.conn
        if conn.complete and self._decoder is None and not self.done and len(conn.buf) <= limit:
            self.done = True
            return conn.take()
        return None

    async def read_chunk(self, seconds: float | None) -> bytes:
        """The next part of the body as it arrives (decoded); ``b""`` once it is whole."""
        conn = self.conn
        while not self.done:
            if conn.buf or self._tail:
                data = self._decode(conn.take() if conn.buf else b"")
                if data:
                    return data
                continue
            if conn.complete:
                self.done = True
                return self._flush()
            if conn.error is not None:
                raise conn.error
            if conn.closed:
                raise Disconnected("backend closed the connection mid-body", answered=True)
            await conn.wait(seconds)
        return b""

    def _decode(self, data: bytes) -> bytes:
        decoder = self._decoder
        if decoder is None:
            return data
        try:
            out = decoder.decompress(self._tail + data, INFLATE_STEP)
        except zlib.error:
            raise MalformedResponse("backend sent a body that does not decompress") from None
        self._tail = decoder.unconsumed_tail
        return out

    def _flush(self) -> bytes:
        if self._decoder is None:
            return b""
        try:
            return self._decoder.flush()
        except zlib.error:
            raise MalformedResponse("backend sent a body that does not decompress") from None

    def release(self) -> None:
        """Give the connection back (whole body read) or close it (anything else)."""
        if self._released:
            return
        self._released = True
        conn = self.conn
        conn.end()
        whole = conn.complete and not conn.buf and not self._tail
        self._release(conn, whole and conn.keep_alive and not conn.until_close and conn.reusable)


def _decoder(coding: str) -> zlib._Decompress | None:
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # 32: detect gzip or zlib header
    raise MalformedResponse(f"backend used an unsupported Content-Encoding: {coding[:40]}")
