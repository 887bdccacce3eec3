"""The admin API that ``nexus backends|models|health`` talk to.

``GET /admin/backends`` (the registry as JSON), ``POST /admin/backends`` (add one:
``{"url", "name"?, "type"?, "priority"?}``; without a type it is detected by probing) and
``DELETE /admin/backends/{ref}`` (by id, name or URL). Only loopback clients may use it,
unless ``NEXUS_ADMIN_TOKEN`` is set, in which case every caller must send it as a bearer
token.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Any

import orjson
from aiohttp import web

from nexus.api.common import json_response
from nexus.backends import detect_type
from nexus.config import BACKEND_TYPES, normalize_choice
from nexus.errors import Forbidden, InvalidRequest, NotFound
from nexus.registry import Backend, DiscoverySource
from nexus.state import STATE, AppState

ADMIN_TOKEN_ENV = "NEXUS_ADMIN_TOKEN"


def _authorize(request: web.Request) -> AppState:
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise Forbidden("admin API: missing or wrong bearer token")
    else:
        try:
            loopback = ipaddress.ip_address(request.remote or "").is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise Forbidden(
                f"admin API is only open to loopback clients unless ${ADMIN_TOKEN_ENV} is set"
            )
    return request.app[STATE]


async def list_backends(request: web.Request) -> web.Response:
    return json_response(_authorize(request).registry.to_dict())


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise InvalidRequest("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return body


async def add_backend(request: web.Request) -> web.Response:
    state = _authorize(request)
    body = await _body(request)
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidRequest("'url' must be an http:// or https:// URL", param="url")
    url = url.rstrip("/")
    name = body.get("name") or url.split("://", 1)[1]
    priority = body.get("priority", 50)
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("'name' must be a non-empty string", param="name")
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise InvalidRequest("'priority' must be an integer from 0 to 100", param="priority")
    existing = state.registry.find(url)
    # A backend added by hand replaces a discovered one at the same address (F05).
    discovered = (
        existing
        if existing is not None and existing.discovery_source is DiscoverySource.MDNS
        else None
    )
    named = state.registry.find(name)
    if (named is not None and named is not discovered) or (
        existing is not None and discovered is None
    ):
        raise InvalidRequest(f"a backend named {name!r} or at {url} already exists", code="exists")
    kind = body.get("type")
    if kind is None:
        kind = await detect_type(state.health.client, Backend(name=name, url=url))
    else:
        kind = normalize_choice(kind, BACKEND_TYPES) if isinstance(kind, str) else None
        if kind is None:
            raise InvalidRequest(f"'type' must be one of {', '.join(BACKEND_TYPES)}", param="type")
    backend = Backend(
        name=name,
        url=url,
        type=kind,
        priority=priority,
        discovery_source=DiscoverySource.MANUAL,
    )
    if discovered is not None:
        state.registry.remove_backend(discovered.id)
        state.health.unwatch(discovered.id)
    state.registry.add_backend(backend)
    await state.health.check(backend)
    state.health.watch(backend, probe_now=False)
    return json_response(backend.to_dict(), status=201)


async def remove_backend(request: web.Request) -> web.Response:
    state = _authorize(request)
    ref = request.match_info["ref"]
    backend = state.registry.find(ref)
    if backend is None:
        raise NotFound(f"no backend with id, name or URL {ref!r}")
    state.registry.remove_backend(backend.id)
    state.health.unwatch(backend.id)
    return json_response({"removed": backend.to_dict()})


routes = [
    web.get("/admin/backends", list_backends),
    web.post("/admin/backends", add_backend),
    web.delete("/admin/backends/{ref:.+}", remove_backend),
]
