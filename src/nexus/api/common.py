"""Error rendering and request ids, shared by every endpoint."""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from nexus.errors import NexusError, NotFound, PayloadTooLarge
from nexus.records import RECORD

log = logging.getLogger("nexus")

# Generated ids: a random per-process prefix and a counter, unique without a syscall each,
# shaped as a UUID because some backends (llama-cpp-python) reject any other request id.
_RANDOM = os.urandom(8).hex()
_ID_PREFIX = f"{_RANDOM[:8]}-{_RANDOM[8:12]}-{_RANDOM[12:]}"
_ID_COUNTER = itertools.count(1)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id(request: web.Request) -> str:
    """The client's ``X-Request-Id`` when well-formed (so its logs and ours join up)."""
    incoming = request.headers.get("X-Request-Id")
    if incoming and REQUEST_ID.fullmatch(incoming):
        return incoming
    n = f"{next(_ID_COUNTER):016x}"
    return f"{_ID_PREFIX}-{n[:4]}-{n[4:]}"


def error_response(exc: NexusError, rid: str | None) -> web.Response:
    headers = dict(exc.headers)
    if rid:
        headers["X-Request-Id"] = rid
    return web.Response(
        body=exc.body(rid), status=exc.status, content_type="application/json", headers=headers
    )


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _from_http(exc: web.HTTPException) -> NexusError:
    if exc.status == 413:
        return PayloadTooLarge("request body is larger than the server accepts")
    if exc.status == 404:
        return NotFound("no such endpoint")
    error = NexusError(exc.reason or "error", code=f"http_{exc.status}")
    error.status = exc.status
    error.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return error


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as OpenAI-shaped JSON, never as a framework page."""
    try:
        return await handler(request)
    except NexusError as exc:
        record = request.get(RECORD)
        return error_response(exc, record.request_id if record else None)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        record = request.get(RECORD)
        response = error_response(_from_http(exc), record.request_id if record else None)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        error = NexusError("internal error in Nexus", code="internal_error")
        record = request.get(RECORD)
        return error_response(error, record.request_id if record else None)
