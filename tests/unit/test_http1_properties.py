"""Property tests of the backend HTTP/1.1 parser, through a transport double.

The bytes of an answer may arrive cut anywhere; whatever the cuts, framing (Content-Length,
chunked with any chunk sizes, close-delimited) and compression, the body read must be the
body sent. And no byte sequence a backend can send makes the parser fail other than with an
``UpstreamError`` (or hang): it is the boundary between a backend's bugs and ours.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools

import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.transport.errors import UpstreamError
from nexus.transport.http1 import Connection, Response, read_response


class TransportDouble:
    """What Connection uses of an asyncio transport, recorded instead of sent."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def cut(wire: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(wire) + 1) for p in points} | {0, len(wire)})
    return [wire[a:b] for a, b in itertools.pairwise(marks) if b > a]


async def exchange(pieces: list[bytes], close: bool) -> tuple[Response, bytes]:
    conn = Connection(("http", "backend", 80))
    conn.connection_made(TransportDouble())  # type: ignore[arg-type]
    conn.begin(b"POST / HTTP/1.1\r\n\r\n")

    async def arrive() -> None:
        for piece in pieces:
            conn.data_received(piece)
            await asyncio.sleep(0)  # one read per loop turn, as from a socket
        if close:
            conn.eof_received()

    feeder = asyncio.create_task(arrive())
    try:
        async with asyncio.timeout(5):
            resp = await read_response(conn, 1.0, lambda c, reusable: None, 1 << 20)
            return resp, await resp.read(1.0)
    finally:
        await feeder


def run(pieces: list[bytes], close: bool) -> tuple[Response, bytes]:
    return uvloop.run(exchange(pieces, close))


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = bytearray(), 0
    for size in sizes:
        part = body[pos : pos + size]
        if not part:
            break
        out += b"%x;ext=1\r\n" % len(part) + part + b"\r\n"
        pos += len(part)
    if pos < len(body):
        out += b"%X\r\n" % (len(body) - pos) + body[pos:] + b"\r\n"
    return bytes(out + b"0\r\nX-Trailer: 1\r\n\r\n")


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=3000),
    framing=st.sampled_from(["length", "chunked", "close"]),
    gzipped=st.booleans(),
    sizes=st.lists(st.integers(1, 700), max_size=12),
    points=st.lists(st.integers(0, 10_000), max_size=15),
)
def test_body_survives_any_cuts_framing_and_compression(
    body: bytes, framing: str, gzipped: bool, sizes: list[int], points: list[int]
) -> None:
    payload = gzip.compress(body) if gzipped else body
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    if gzipped:
        head += b"Content-Encoding: gzip\r\n"
    if framing == "length":
        wire = head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
    elif framing == "chunked":
        wire = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(payload, sizes)
    else:
        wire = head + b"\r\n" + payload
    resp, read = run(cut(wire, points), close=framing == "close")
    assert resp.status == 200 and read == body
    assert resp.done
    if framing != "close":
        assert not resp.conn.buf  # nothing of the answer left behind: reusable


@settings(max_examples=500, deadline=None)
@given(
    status=st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 502 Bad\r\n", b""]),
    garbage=st.binary(max_size=400),
    points=st.lists(st.integers(0, 1000), max_size=6),
)
def test_any_bytes_end_in_an_answer_or_an_upstream_error(
    status: bytes, garbage: bytes, points: list[int]
) -> None:
    # Framing-ish garbage too: header names and chunk lines the parser has to look at.
    wire = status + garbage.replace(b"@", b"\r\n").replace(b"#", b"Transfer-Encoding: chunked")
    try:
        resp, _ = run(cut(wire, points), close=True)
    except UpstreamError:
        return
    assert 200 <= resp.status <= 999
