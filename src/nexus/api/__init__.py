"""HTTP endpoints, one module per family; ``routes()`` lists them all."""

from __future__ import annotations

from aiohttp import web

from nexus.api import admin, proxied, status


def routes() -> list[web.RouteDef]:
    return [*proxied.routes, *status.routes, *admin.routes]
