"""The backend HTTP/1.1 client (proxy/http1.py, proxy/pool.py) against scripted servers.

Each test's server is a raw asyncio server on 127.0.0.1 that writes exactly the bytes the
test names, so framing edge cases (chunks split anywhere, trailers, 1xx, close-delimited
bodies, broken heads) and connection reuse are exercised byte for byte.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from nexus.transport import pool as pool_module
from nexus.transport.errors import (
    ConnectError,
    Disconnected,
    InvalidHeader,
    MalformedResponse,
    UpstreamError,
)
from nexus.transport.http1 import HIGH_WATER
from nexus.transport.pool import Pool, parse_origin
from tests.helpers import wait_until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Script:
    """A server whose every connection runs ``handler``; counts connections and heads."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.url = ""
        self.open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.open[task] = writer
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.open.pop(task, None)

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        """Read one request (head and Content-Length body); returns the body."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return await reader.readexactly(length)


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[Script]:
    script = Script(handler)
    server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    script.url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(10):
            yield script
    finally:
        server.close()
        for writer in script.open.values():
            writer.close()  # handlers waiting on the client see EOF and end
        await asyncio.wait_for(asyncio.gather(*script.open), 5)


@asynccontextmanager
async def server_answering(*responses: bytes, then_close: bool = False) -> AsyncIterator[Script]:
    """Answers successive requests on each connection with ``responses``, in order."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
        for response in responses:
            await script.request(r)
            w.write(response)
            await w.drain()
        if not then_close:
            await r.read()  # keep the connection open until the client closes it

    async with scripted(handler) as script:
        yield script


async def post(pool: Pool, url: str, body: bytes = b'{"a":1}') -> tuple[int, bytes]:
    resp = await pool.post(url, "/v1/chat/completions", body, {"X-Test": "yes"})
    try:
        return resp.status, await resp.read(2.0)
    finally:
        resp.release()


async def test_keep_alive_reuses_one_connection_and_sends_a_plain_request() -> None:
    pool = Pool(2.0, 2.0)
    async with server_answering(OK, OK, OK) as server:
        for _ in range(3):
            assert await post(pool, server.url) == (200, b"{}")
    assert server.connections == 1
    head = server.heads[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: {server.url.removeprefix('http://')}\r\n" in head
    assert "Content-Length: 7\r\n" in head and "X-Test: yes\r\n" in head
    pool.close()


async def test_chunked_body_split_anywhere_with_extensions_and_trailers() -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    )

    async def trickle(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        for _ in range(2):
            await script.request(r)
            for i in range(0, len(wire), 3):  # three bytes at a time
                w.write(wire[i : i + 3])
                await w.drain()
                await asyncio.sleep(0)
        await r.read()

    pool = Pool(2.0, 2.0)
    async with scripted(trickle) as script:
        assert await post(pool, script.url) == (200, b"hello 0123456789")
        assert await post(pool, script.url) == (200, b"hello 0123456789")
    assert script.connections == 1  # the trailers were consumed: the connection was reused
    pool.close()


async def test_streamed_chunks_arrive_one_by_one() -> None:
    release = asyncio.Event()

    async def stream(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await script.request(r)
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n"
        )
        await w.drain()
        await release.wait()
        w.write(b"6\r\ndata:2\r\n0\r\n\r\n")
        await w.drain()
        await r.read()

    pool = Pool(2.0, 2.0)
    async with scripted(stream) as script:
        resp = await pool.post(script.url, "/v1/chat/completions", b"{}", {})
        assert resp.content_type == "text/event-stream"
        assert await resp.read_chunk(2.0) == b"data:1"  # before the rest was even written
        release.set()
        assert await resp.read_chunk(2.0) == b"data:2"
        assert await resp.read_chunk(2.0) == b""
        resp.release()
    pool.close()


async def test_stream_released_after_its_last_event_keeps_the_connection() -> None:
    # The relay stops reading at [DONE]; the chunked terminator arrives just after.
    async def stream(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        for _ in range(2):
            await script.request(r)
            w.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n"
            )
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b"0\r\n\r\n")
            await w.drain()
        await r.read()

    pool = Pool(2.0, 2.0)
    async with scripted(stream) as script:
        for _ in range(2):
            resp = await pool.post(script.url, "/v1/chat/completions", b"{}", {})
            assert await resp.read_chunk(2.0) == b"data: [DONE]\n\n"
            # The terminator arrives and waits in our buffer, unread.
            await wait_until(lambda r=resp: r.conn.complete, what="the chunked terminator")
            resp.release()
    assert script.connections == 1
    pool.close()


async def test_gzip_body_is_decoded() -> None:
    body = gzip.compress(b'{"answer": "' + b"x" * 5000 + b'"}')
    wire = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    pool = Pool(2.0, 2.0)
    async with server_answering(wire) as server:
        status, raw = await post(pool, server.url)
    assert status == 200 and raw == b'{"answer": "' + b"x" * 5000 + b'"}'
    assert b"Accept-Encoding: gzip, deflate" in server.heads[0]
    pool.close()


async def test_body_framed_by_close_is_read_to_the_end_and_not_reused() -> None:
    wire = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"closed": true}'
    pool = Pool(2.0, 2.0)
    async with server_answering(wire, then_close=True) as server:
        assert await post(pool, server.url) == (200, b'{"closed": true}')
        assert await post(pool, server.url) == (200, b'{"closed": true}')
    assert server.connections == 2
    pool.close()


async def test_connection_close_header_is_honoured() -> None:
    wire = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    pool = Pool(2.0, 2.0)
    async with server_answering(wire, wire) as server:
        await post(pool, server.url)
        await post(pool, server.url)
    assert server.connections == 2
    pool.close()


async def test_informational_answers_are_skipped() -> None:
    pool = Pool(2.0, 2.0)
    async with server_answering(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK) as server:
        assert await post(pool, server.url) == (200, b"{}")
    pool.close()


async def test_no_content_answer_has_no_body() -> None:
    pool = Pool(2.0, 2.0)
    async with server_answering(b"HTTP/1.1 204 No Content\r\n\r\n", OK) as server:
        assert await post(pool, server.url) == (204, b"")
        assert await post(pool, server.url) == (200, b"{}")
    assert server.connections == 1
    pool.close()


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "did not answer in HTTP/1.x"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "did not answer in HTTP/1.x"),
        (b"HTTP/1.1 200 OK\r\n bad: fold\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n{}", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunked"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "malformed chunked"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
            "unsupported Content-Encoding: br",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope",
            "does not decompress",
        ),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000, "larger than 64 KiB"),
    ],
)
async def test_malformed_answers_are_errors_that_name_the_problem(wire: bytes, reason: str) -> None:
    pool = Pool(2.0, 2.0)
    async with server_answering(wire) as server:
        with pytest.raises(MalformedResponse, match=reason):
            await post(pool, server.url)
    pool.close()


async def test_truncated_body_is_a_disconnect() -> None:
    wire = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial'
    pool = Pool(2.0, 2.0)
    async with server_answering(wire, then_close=True) as server:
        with pytest.raises(Disconnected, match="mid-body"):
            await post(pool, server.url)
    pool.close()


async def test_stale_keep_alive_connection_is_retried_once_on_a_fresh_one() -> None:
    # The backend answers once, then (as an idle timeout would) closes the connection
    # just as the second request arrives, without answering it.
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await script.request(r)
        w.write(OK)
        await w.drain()
        if n == 1:
            await script.request(r)  # read it, answer nothing, close
        else:
            await r.read()

    pool = Pool(2.0, 2.0)
    async with scripted(handler) as script:
        assert await post(pool, script.url) == (200, b"{}")
        assert await post(pool, script.url) == (200, b"{}")
    assert script.connections == 2 and len(script.heads) == 3
    pool.close()


async def test_a_partly_answered_request_is_never_resent() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await script.request(r)
        w.write(OK)
        await script.request(r)
        w.write(b"HTTP/1.1 200 O")  # half a head, then the connection drops
        await w.drain()

    pool = Pool(2.0, 2.0)
    async with scripted(handler) as script:
        assert await post(pool, script.url) == (200, b"{}")
        with pytest.raises(Disconnected, match="before answering"):
            await post(pool, script.url)
    assert script.connections == 1
    pool.close()


async def test_silent_backend_times_out() -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await script.request(r)
        await r.read()

    pool = Pool(2.0, 0.2)
    async with scripted(silent) as script:
        with pytest.raises(TimeoutError):
            await pool.post(script.url, "/v1/chat/completions", b"{}", {})
    pool.close()


async def test_refused_connection_names_host_and_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        pool = Pool(2.0, 2.0)
        with pytest.raises(ConnectError, match=f"connection refused by 127.0.0.1:{port}"):
            await pool.post(f"http://127.0.0.1:{port}", "/v1/embeddings", b"{}", {})


async def test_slow_reader_pauses_the_backend_socket_and_loses_nothing() -> None:
    size = 4 * HIGH_WATER

    async def flood(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await script.request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for i in range(size // 1024):
            w.write(bytes([i % 256]) * 1024)
            await w.drain()
        await r.read()

    pool = Pool(2.0, 2.0)
    async with scripted(flood) as script:
        resp = await pool.post(script.url, "/v1/chat/completions", b"{}", {})
        await wait_until(lambda: resp.conn.paused, what="the backend filling our buffer")
        assert resp.conn.paused
        assert len(resp.conn.buf) <= 2 * HIGH_WATER  # bounded, not the whole body
        body = b""
        while piece := await resp.read_chunk(2.0):
            body += piece
        assert len(body) == size
        assert (
            body[:1024] == b"\x00" * 1024
            and body[-1024:] == bytes([(size // 1024 - 1) % 256]) * 1024
        )
        resp.release()
    pool.close()


async def test_answer_larger_than_the_buffer_limit_is_read_whole() -> None:
    # Reading a whole body must lift the slow-reader pause, or it would wait forever.
    body = b'{"data": "' + b"e" * (5 * HIGH_WATER) + b'"}'
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    pool = Pool(2.0, 2.0)
    async with server_answering(wire, wire) as server:
        assert await post(pool, server.url) == (200, body)
        assert await post(pool, server.url) == (200, body)
    assert server.connections == 1
    pool.close()


async def test_connections_idle_too_long_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "IDLE_SECONDS", 0.2)
    pool = Pool(2.0, 2.0)
    async with server_answering(OK) as burst, server_answering(OK, OK) as other:
        await asyncio.gather(*(post(pool, burst.url) for _ in range(3)))  # three connections
        assert burst.connections == 3 and len(burst.open) == 3
        await asyncio.sleep(0.3)
        await post(pool, other.url)  # giving a connection back sweeps the pool
        # Each handler ends when Nexus closes its connection.
        await wait_until(lambda: not burst.open, what="the idle connections closed")
        assert len(other.open) == 1  # the fresh one stays
    pool.close()


async def test_header_values_with_line_breaks_are_refused() -> None:
    pool = Pool(2.0, 2.0)
    async with server_answering(OK) as server:
        with pytest.raises(InvalidHeader):
            await pool.post(server.url, "/x", b"{}", {"Authorization": "Bearer a\r\nX-Evil: 1"})
    assert server.heads == []
    pool.close()


def test_origins_keep_prefix_port_and_bracketed_ipv6_host() -> None:
    v6 = parse_origin("http://[::1]:8080/openai/")
    assert (v6.host, v6.port, v6.prefix, v6.tls) == ("::1", 8080, "/openai", False)
    assert "Host: [::1]:8080\r\n" in v6.head
    cloud = parse_origin("https://api.example.com/v1")
    assert (cloud.port, cloud.prefix, cloud.tls) == (443, "/v1", True)
    assert "Host: api.example.com\r\n" in cloud.head
    with pytest.raises(UpstreamError, match="invalid backend URL"):
        parse_origin("ftp://box")
