"""``POST /v1/chat/completions`` and ``POST /v1/embeddings``: the proxied endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from nexus import logs
from nexus.api.common import request_id
from nexus.errors import (
    InvalidRequest,
    NexusError,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
    UnsupportedMediaType,
)
from nexus.records import RECORD, RequestRecord
from nexus.routing.requirements import Requirements, inspect_chat, inspect_embeddings
from nexus.state import STATE, AppState

Inspector = Callable[[Any], Requirements]
JSON_TYPES = ("application/json", "text/plain", "application/octet-stream", "")


async def _read_json(request: web.Request, limit: int, seconds: float) -> tuple[bytes, Any]:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    ctype = request.content_type
    if ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"expected a JSON body (application/json), got {ctype}")
    try:
        if request.content.is_eof():
            raw = await request.read()  # all here already (small bodies): no timer needed
        else:
            async with asyncio.timeout(seconds):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes") from None
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {seconds:g}s") from None
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


async def _proxy(
    request: web.Request, path: str, endpoint: str, inspect: Inspector
) -> web.StreamResponse:
    state: AppState = request.app[STATE]
    record = RequestRecord(request_id=request_id(request), endpoint=endpoint)
    request[RECORD] = record
    if state.draining:
        raise ShuttingDown("Nexus is shutting down; retry on another instance")
    if state.in_flight >= state.config.server.max_concurrent_requests:
        raise Overloaded(
            f"more than {state.config.server.max_concurrent_requests} requests in flight"
        )
    state.in_flight += 1
    try:
        server = state.config.server
        raw, body = await _read_json(
            request, server.max_request_bytes, server.client_timeout_seconds
        )
        req = inspect(body)
        if state.config.logging.log_content:
            logs.log_content(record.request_id, body)
        record.model = req.model
        record.stream = req.stream
        return await state.forwarder.forward(request, path, body, raw, req, record)
    except NexusError as exc:
        record.status = exc.status
        record.error_type = exc.code or exc.type
        record.error = exc.message
        raise
    except asyncio.CancelledError:
        record.status = 499
        record.error_type = "client_disconnected"
        raise
    finally:
        state.in_flight -= 1
        state.recorder.finish(record)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "/v1/chat/completions", "chat", inspect_chat)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, "/v1/embeddings", "embeddings", inspect_embeddings)


routes = [
    web.post("/v1/chat/completions", chat_completions),
    web.post("/v1/embeddings", embeddings),
]
