"""Slow and stuck clients cannot exhaust the server: timeouts bound every one of them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import Nexus, backend_entry, running_nexus, wait_until

MSG = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def nexus_on_port(tmp_path: Path, client_timeout: float) -> AsyncIterator[tuple[Nexus, int]]:
    """Nexus in front of one fake vLLM, and the port to open raw connections to."""
    async with FakeVLLM([FakeModel("m")]) as fake:
        server = {"client_timeout_seconds": client_timeout}
        async with running_nexus(
            tmp_path, [backend_entry(fake, "v", "vllm")], server=server
        ) as nexus:
            yield nexus, int(nexus.url.rsplit(":", 1)[1])


async def test_slowloris_connections_are_cut_and_others_served(tmp_path: Path) -> None:
    async with nexus_on_port(tmp_path, 1) as (nexus, port):
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
        for _, writer in conns:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        # While they trickle, real clients are served.
        for _ in range(5):
            reply = await nexus.client.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
            assert reply.choices[0].message.content
            for _, writer in conns:
                writer.write(b"X-Slow: 1\r\n")
            await asyncio.sleep(0.1)
        # Within the client timeout (plus slack), every trickling connection is closed.
        async with asyncio.timeout(5):
            closed = await asyncio.gather(*(reader.read() for reader, _ in conns))
        assert all(c == b"" or c.startswith(b"HTTP/1.") for c in closed)
        for _, writer in conns:
            writer.close()


async def test_slow_body_gets_408(tmp_path: Path) -> None:
    async with nexus_on_port(tmp_path, 0.5) as (nexus, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model"'
        )
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        writer.close()
        assert nexus.state.in_flight == 0


def chat_request(
    payload: bytes = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(payload) + payload
    )


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def test_an_idle_kept_alive_connection_is_closed_a_busy_one_is_not(tmp_path: Path) -> None:
    async with nexus_on_port(tmp_path, 1) as (_, port):
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(chat_request())
        assert (await read_answer(idle_reader)).startswith(b"HTTP/1.1 200")
        loop = asyncio.get_running_loop()
        answered = loop.time()
        # The busy one asks every 0.4 s for 2.5 s: each answer starts its idle time anew.
        while loop.time() - answered < 2.5:
            busy_writer.write(chat_request())
            assert (await read_answer(busy_reader)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.4)
        # The idle one was closed quietly (no 408: it owed no head) after about 1 s.
        async with asyncio.timeout(5):
            assert await idle_reader.read() == b""
        busy_writer.write(chat_request())
        assert (await read_answer(busy_reader)).startswith(b"HTTP/1.1 200")
        for writer in (idle_writer, busy_writer):
            writer.close()


class EndlessStream:
    """An OpenAI-compatible upstream whose stream never ends (until its reader goes away)."""

    def __init__(self) -> None:
        self.active = 0
        self.ended_by_peer = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        event = (
            b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"x" * 1000 + b'"}}]}\n\n'
        )
        self.active += 1
        try:
            while True:
                await resp.write(event * 16)
        except (ConnectionError, asyncio.CancelledError):
            self.ended_by_peer += 1
            raise
        finally:
            self.active -= 1

    async def __aenter__(self) -> EndlessStream:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_reader_that_never_reads_is_dropped_and_upstream_released(tmp_path: Path) -> None:
    async with EndlessStream() as upstream:
        server = {"stream_idle_timeout_seconds": 0.5}
        backend = {"name": "v", "url": upstream.url, "type": "generic"}
        async with running_nexus(tmp_path, [backend], server=server) as nexus:
            port = int(nexus.url.rsplit(":", 1)[1])
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            payload = (
                b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
            )
            sock.send(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(payload) + payload
            )
            # Never read. Nexus must give up on us and close the upstream stream.
            await wait_until(
                lambda: (
                    upstream.ended_by_peer
                    and not (nexus.state.in_flight or any(nexus.pending().values()))
                ),
                timeout=20,
                interval=0.05,
                what="the reader dropped and the upstream stream closed",
            )
            assert upstream.active == 0
            text = nexus.state.metrics.exposition().decode()
            assert 'nexus_errors_total{type="client_disconnected"} 1.0' in text
            sock.close()
            status, health, _ = await nexus.get("/health")
            assert status == 200 and health["status"] == "healthy"
