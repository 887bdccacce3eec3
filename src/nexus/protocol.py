"""OpenAI-shaped answers even for requests that never reach a handler.

aiohttp answers HTTP it cannot parse (oversized headers, a broken request line, invalid
chunking) from inside its connection handler, with a text/plain page, before any
middleware runs. Clients of an OpenAI endpoint expect ``{"error": {...}}`` everywhere, so
the server's connection handler is swapped for one whose ``handle_error`` answers in that
shape, quietly: garbage from a client is not an error of ours worth a traceback.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from nexus.errors import NexusError

log = logging.getLogger("nexus.http")
# Replaces aiohttp's default, which names Python's and aiohttp's versions to anyone asking.
SERVER = "nexus"


class _Handler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.debug("unparseable request from %s: %s", request.remote, exc or message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        error = NexusError(f"{phrase}: the request could not be parsed", code=f"http_{status}")
        error.type = "invalid_request_error" if status < 500 else "server_error"
        response = web.Response(status=status, body=error.body(), content_type="application/json")
        response.headers["Server"] = SERVER
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


def install(runner: web.AppRunner) -> None:
    """Call after ``runner.setup()``: new connections get the OpenAI-shaped error path."""
    server = runner.server
    assert server is not None
    server.__class__ = _Server


async def set_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every response says only "nexus"."""
    response.headers["Server"] = SERVER
