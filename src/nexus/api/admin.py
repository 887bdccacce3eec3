"""The admin API that ``nexus backends|models|health`` talk to.

``GET /admin/backends`` (the registry as JSON), ``POST /admin/backends`` (add one:
``{"url", "name"?, "type"?, "priority"?, "zone"?, "tier"?, "api_key_env"?}``; without a
type it is detected by probing; a cloud type needs ``api_key_env``) and
``DELETE /admin/backends/{ref}`` (by id, name or URL).

Who may call it: with ``NEXUS_ADMIN_TOKEN`` set, whoever sends it as a bearer token;
without, loopback clients only, and only from no browser or from a page of Nexus's own
(``nexus.asgi.guards``: Origin and Host checked, JSON bodies only) so that a web page
visited on this host cannot use the trust loopback gets.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from nexus.api.credentials import bearer_token, presents
from nexus.asgi.guards import Sites, check_admin_body
from nexus.asgi.routes import Request, Response, Router
from nexus.backends import detect_type
from nexus.config import BACKEND_TYPES, CLOUD_TYPES, ENV_NAME, ZONES, normalize_choice
from nexus.errors import Forbidden, InvalidRequest, NotFound
from nexus.registry import Backend, DiscoverySource, name_problem, url_problem
from nexus.routing.tiers import DEFAULT_TIER
from nexus.state import AppState

ADMIN_TOKEN_ENV = "NEXUS_ADMIN_TOKEN"


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def authorize(request: Request, sites: Sites) -> None:
    """Raises Forbidden unless the caller may use admin endpoints (see the module text)."""
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if token:
        sent = bearer_token(request.header("Authorization"))
        if sent is None or not presents(sent, token):
            raise Forbidden("admin API: missing or wrong bearer token")
        return
    if not is_loopback(request.client):
        raise Forbidden(
            f"admin API is only open to loopback clients unless ${ADMIN_TOKEN_ENV} is set"
        )
    sites.check(request.scope)


async def json_object(request: Request) -> dict[str, Any]:
    """An admin request's body, which must be a JSON object (400 otherwise)."""
    body = await request.json()
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return body


class Admin:
    def __init__(self, state: AppState, sites: Sites) -> None:
        self.state = state
        self.sites = sites
        self._adding: set[str] = set()  # names and URLs of adds still probing

    def add_routes(self, router: Router) -> None:
        router.add("GET", "/admin/backends", self.list_backends)
        router.add("POST", "/admin/backends", self.add_backend)
        router.add("DELETE", "/admin/backends/{ref:path}", self.remove_backend)

    async def list_backends(self, request: Request) -> Response:
        authorize(request, self.sites)
        return Response.json(self.state.registry.to_dict())

    async def add_backend(self, request: Request) -> Response:
        authorize(request, self.sites)
        check_admin_body(request.scope)
        body = await json_object(request)
        url, name, priority = _fields(body)
        keys = {name, url}
        if keys & self._adding:
            raise InvalidRequest(f"{name!r} is being added already", code="exists")
        self._adding |= keys
        try:
            return await self._add(body, url, name, priority)
        finally:
            self._adding -= keys

    async def _add(self, body: dict[str, Any], url: str, name: str, priority: int) -> Response:
        state = self.state
        kind = body.get("type")
        if kind is None:
            kind = await detect_type(state.health.client, Backend(name=name, url=url))
        else:
            kind = normalize_choice(kind, BACKEND_TYPES) if isinstance(kind, str) else None
            if kind is None:
                raise InvalidRequest(
                    f"'type' must be one of {', '.join(BACKEND_TYPES)}", param="type"
                )
        zone, tier, key_env = _policy(body, kind)
        replaced = self._conflict(url, name)  # checked after the await: others may have added
        backend = Backend(
            name=name,
            url=url,
            type=kind,
            priority=priority,
            zone=zone,
            tier=tier,
            api_key_env=key_env,
            discovery_source=DiscoverySource.MANUAL,
        )
        if replaced is not None:
            state.registry.remove_backend(replaced.id)
            state.health.unwatch(replaced.id)
        state.registry.add_backend(backend)
        await state.health.check(backend)
        if state.registry.get_backend(backend.id) is not backend:
            raise InvalidRequest(
                f"backend {name!r} was removed while it was being added", code="removed"
            )
        state.health.watch(backend, probe_now=False)
        return Response.json(backend.to_dict(), status=201)

    def _conflict(self, url: str, name: str) -> Backend | None:
        """The discovered backend this manual one replaces (F05), if any; raises if the
        name or URL is taken otherwise."""
        registry = self.state.registry
        existing = registry.find(url)
        discovered = (
            existing if existing and existing.discovery_source is DiscoverySource.MDNS else None
        )
        named = registry.find(name)
        if (named is not None and named is not discovered) or (existing and discovered is None):
            raise InvalidRequest(
                f"a backend named {name!r} or at {url} already exists", code="exists"
            )
        return discovered

    async def remove_backend(self, request: Request) -> Response:
        authorize(request, self.sites)
        state = self.state
        ref = request.params["ref"]
        backend = state.registry.find(ref)
        if backend is None:
            raise NotFound(f"no backend with id, name or URL {ref[:200]!r}")
        state.registry.remove_backend(backend.id)
        state.health.unwatch(backend.id)
        return Response.json({"removed": backend.to_dict()})


def _fields(body: dict[str, Any]) -> tuple[str, str, int]:
    url = body.get("url")
    if (problem := url_problem(url)) is not None:
        raise InvalidRequest(f"'url' {problem}", param="url")
    assert isinstance(url, str)
    url = Backend(name="x", url=url).url  # credentials dropped, trailing slash trimmed
    name = body.get("name") or url.split("://", 1)[1]
    if (problem := name_problem(name)) is not None:
        raise InvalidRequest(f"'name' {problem}", param="name")
    priority = body.get("priority", 50)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
        raise InvalidRequest("'priority' must be an integer from 0 to 100", param="priority")
    return url, name, priority


def _policy(body: dict[str, Any], kind: str) -> tuple[str, int, str]:
    """The optional zone, tier and key variable, with the config's defaults and rules."""
    cloud = kind in CLOUD_TYPES
    key_env = body.get("api_key_env", "")
    if not isinstance(key_env, str) or (key_env and not ENV_NAME.fullmatch(key_env)):
        raise InvalidRequest("'api_key_env' must name an environment variable", param="api_key_env")
    if cloud and not key_env:
        raise InvalidRequest(
            f"'api_key_env' is required for a {kind} backend (the variable holding its key)",
            param="api_key_env",
        )
    zone = body.get("zone", "open" if cloud else "restricted")
    zone = normalize_choice(zone, ZONES) if isinstance(zone, str) else None
    if zone is None:
        raise InvalidRequest(f"'zone' must be one of {', '.join(ZONES)}", param="zone")
    tier = body.get("tier", DEFAULT_TIER)
    if isinstance(tier, bool) or not isinstance(tier, int) or not 1 <= tier <= 5:
        raise InvalidRequest("'tier' must be an integer from 1 to 5", param="tier")
    return zone, tier, key_env
