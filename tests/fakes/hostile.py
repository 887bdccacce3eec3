"""HostileBackend: an OpenAI-compatible fake that attacks the gateway in front of it.

A :class:`~tests.fakes.FakeBackend` (real aiohttp server on 127.0.0.1, port 0) whose chat
answer and probe answer can be switched to a hostile one:

``chat``  (POST /v1/chat/completions; ``Chat.OK`` is FakeBackend's normal answer)
    GZIP_BOMB / GZIP_BOMB_500  200 / 500 with ``Content-Encoding: gzip``: ``bomb_bytes`` of
                               zeros inflated from a ~1/1000 smaller body (the fake never
                               holds the inflated bytes), written ``bomb_write`` bytes at a
                               time: the default, 1 MiB, hands a reader that inflates all it
                               has at once hundreds of MiB in one go
    HTML_400                   400 ``text/html`` with ``html`` as the body
    REDIRECT                   302 to ``redirect_to`` with a JSON body
    GIANT_EVENT                a stream: one valid event, then ``giant_bytes`` of an event
                               that never ends (no blank line), in 64 KiB writes
    DONE_UNTERMINATED          a stream ending with ``data: [DONE]`` and no blank line
    NON_JSON_EVENT             a stream whose second event's data is not JSON
    NO_DONE                    a stream that ends (cleanly) without ``[DONE]``

``probe``  (GET /v1/models)
    GZIP_BOMB, REDIRECT (as above), SLOW (answers after ``probe_delay`` seconds)

``key``: when set, /v1/models and chat answer 401 unless sent ``Authorization: Bearer <key>``.
Every other path is a JSON 404, as FakeServer answers.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import zlib
from enum import Enum

import orjson
from aiohttp import web

from . import shapes
from .base import FakeBackend
from .models import FakeModel
from .server import Route, json_response

WRITE = 64 * 1024


class Chat(Enum):
    OK = "ok"
    GZIP_BOMB = "gzip_bomb"
    GZIP_BOMB_500 = "gzip_bomb_500"
    HTML_400 = "html_400"
    REDIRECT = "redirect"
    GIANT_EVENT = "giant_event"
    DONE_UNTERMINATED = "done_unterminated"
    NON_JSON_EVENT = "non_json_event"
    NO_DONE = "no_done"


class Probe(Enum):
    OK = "ok"
    GZIP_BOMB = "gzip_bomb"
    REDIRECT = "redirect"
    SLOW = "slow"


@functools.cache
def gzip_bomb(size: int) -> bytes:
    """A valid gzip body inflating to ``size`` zero bytes (``size`` a multiple of 1 MiB).

    One fully flushed deflate block of 1 MiB of zeros, repeated: each copy is a valid
    continuation, so the body is built without ever compressing (or holding) ``size`` bytes.
    """
    step = 1 << 20
    assert size % step == 0 and size > 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes(step)) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc, zeros = 0, bytes(step)
    for _ in range(size // step):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return header + block * (size // step) + deflate.flush() + trailer


class HostileBackend(FakeBackend):
    kind = "hostile"

    def __init__(self, models: list[FakeModel] | None = None) -> None:
        super().__init__(models or [FakeModel("m")])
        self.chat = Chat.OK
        self.probe = Probe.OK
        self.key: str | None = None
        self.bomb_bytes = 1 << 30
        self.bomb_write = 1 << 20
        self.giant_bytes = 200 << 20
        self.probe_delay = 1.0
        self.redirect_to = "http://127.0.0.1:1/v1/models"
        self.html = b"<html><body><script>alert(1)</script></body></html>"
        self.giant_sent = 0  # bytes of the giant event written before the peer left

    def _routes(self) -> list[Route]:
        return [
            ("POST", "/v1/chat/completions", self._hostile_chat),
            ("GET", "/v1/models", self._hostile_models),
        ]

    # -- probes ---------------------------------------------------------------------------

    async def _hostile_models(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if self.probe is Probe.GZIP_BOMB:
            return await self._bomb(request, 200)
        if self.probe is Probe.REDIRECT:
            return self._redirect()
        if self.probe is Probe.SLOW:
            await self._sleep(request, self.probe_delay)
        return await self._v1_models(request)

    # -- chat -----------------------------------------------------------------------------

    async def _hostile_chat(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._unauthorized(request)) is not None:
            return refused
        mode = self.chat
        if mode is Chat.OK:
            return await self._chat(request)
        if mode in (Chat.GZIP_BOMB, Chat.GZIP_BOMB_500):
            return await self._bomb(request, 200 if mode is Chat.GZIP_BOMB else 500)
        if mode is Chat.HTML_400:
            return web.Response(status=400, body=self.html, content_type="text/html")
        if mode is Chat.REDIRECT:
            return self._redirect()
        first = self._chunk("Hello")
        if mode is Chat.GIANT_EVENT:
            return await self._giant(request, first)
        if mode is Chat.DONE_UNTERMINATED:
            frames = [first + b"\n\n", b"data: [DONE]"]
        elif mode is Chat.NON_JSON_EVENT:
            frames = [first + b"\n\n", b"data: this is not JSON {\n\n", b"data: [DONE]\n\n"]
        else:  # NO_DONE
            frames = [first + b"\n\n", self._chunk(" world") + b"\n\n"]
        resp = await self._sse(request)
        for frame in frames:
            await resp.write(frame)
            await asyncio.sleep(0.01)  # separate reads on the other side
        await resp.write_eof()
        return resp

    # -- pieces ---------------------------------------------------------------------------

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.key is None or request.headers.get("Authorization") == f"Bearer {self.key}":
            return None
        return json_response(shapes.error_body(401, "Incorrect API key provided"), status=401)

    def _redirect(self) -> web.Response:
        body = orjson.dumps({"object": "list", "data": [], "note": "moved"})
        return web.Response(
            status=302,
            body=body,
            content_type="application/json",
            headers={"Location": self.redirect_to},
        )

    def _chunk(self, text: str) -> bytes:
        chunk = {
            "id": "chatcmpl-hostile",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.models[0].id,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
        return b"data: " + orjson.dumps(chunk)

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        return resp

    async def _bomb(self, request: web.Request, status: int) -> web.StreamResponse:
        body = gzip_bomb(self.bomb_bytes)
        resp = web.StreamResponse(
            status=status, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )
        resp.content_length = len(body)
        await resp.prepare(request)
        try:
            for start in range(0, len(body), self.bomb_write):
                await resp.write(body[start : start + self.bomb_write])
        except ConnectionError:
            pass  # the gateway gave up reading: that is the point
        return resp

    async def _giant(self, request: web.Request, first: bytes) -> web.StreamResponse:
        resp = await self._sse(request)
        self.giant_sent = 0
        piece = b"a" * WRITE
        try:
            await resp.write(first + b"\n\n")
            await resp.write(b"data: ")
            while self.giant_sent < self.giant_bytes:
                await resp.write(piece)
                self.giant_sent += len(piece)
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp


__all__ = ["Chat", "HostileBackend", "Probe", "gzip_bomb"]
