"""Admin API of the fleet: lifecycle operations (F20) and recommendations (F19).

* ``POST /admin/models/load``    ``{"model", "backend", "pull"?: bool}``
* ``POST /admin/models/unload``  ``{"model", "backend"}``
* ``POST /admin/models/migrate`` ``{"model", "from", "to"}``
* ``GET  /admin/operations``, ``GET /admin/operations/{id}``
* ``GET  /admin/fleet/recommendations``, ``POST /admin/fleet/apply/{id}``

An action answers 202 with ``{"operation": {...}}`` at once (its ``id`` to follow it), or
at once with 404 (unknown backend or model), 409 (busy model, another operation on it, or
as many pulls running as may), 501 (the backend's type cannot) or 502 (the backend did not
answer the check). Protected exactly like the rest of the admin API
(``nexus.api.admin.authorize``, JSON bodies only).
"""

from __future__ import annotations

from typing import Any

from nexus.api.admin import authorize, json_object
from nexus.asgi.guards import Sites, check_admin_body
from nexus.asgi.routes import Request, Response, Router
from nexus.errors import InvalidRequest, NotFound
from nexus.fleet.operations import Operation
from nexus.fleet.service import Fleet

MAX_NAME = 256  # longest model or backend name accepted (both end up in logs and listings)


def add_routes(router: Router, fleet: Fleet, sites: Sites) -> None:
    api = FleetAPI(fleet, sites)
    router.add("POST", "/admin/models/load", api.load)
    router.add("POST", "/admin/models/unload", api.unload)
    router.add("POST", "/admin/models/migrate", api.migrate)
    router.add("GET", "/admin/operations", api.operations)
    router.add("GET", "/admin/operations/{id}", api.operation)
    router.add("GET", "/admin/fleet/recommendations", api.recommendations)
    router.add("POST", "/admin/fleet/apply/{id}", api.apply)


class FleetAPI:
    def __init__(self, fleet: Fleet, sites: Sites) -> None:
        self.fleet = fleet
        self.sites = sites

    async def load(self, request: Request) -> Response:
        body = await self._body(request)
        pull = body.get("pull", False)
        if not isinstance(pull, bool):
            raise InvalidRequest("'pull' must be true or false", param="pull")
        op = await self.fleet.load(_name(body, "backend"), _name(body, "model"), pull=pull)
        return _accepted(op)

    async def unload(self, request: Request) -> Response:
        body = await self._body(request)
        return _accepted(await self.fleet.unload(_name(body, "backend"), _name(body, "model")))

    async def migrate(self, request: Request) -> Response:
        body = await self._body(request)
        model, source, target = _name(body, "model"), _name(body, "from"), _name(body, "to")
        return _accepted(await self.fleet.migrate(model, source, target))

    async def operations(self, request: Request) -> Response:
        authorize(request, self.sites)
        return Response.json({"operations": [op.to_dict() for op in self.fleet.operations()]})

    async def operation(self, request: Request) -> Response:
        authorize(request, self.sites)
        op = self.fleet.operation(request.params["id"])
        if op is None:
            raise NotFound(f"no operation {request.params['id'][:100]!r}")
        return Response.json(op.to_dict())

    async def recommendations(self, request: Request) -> Response:
        authorize(request, self.sites)
        return Response.json(self.fleet.status())

    async def apply(self, request: Request) -> Response:
        authorize(request, self.sites)
        check_admin_body(request.scope)
        return _accepted(await self.fleet.apply(request.params["id"]))

    async def _body(self, request: Request) -> dict[str, Any]:
        authorize(request, self.sites)
        check_admin_body(request.scope)
        return await json_object(request)


def _name(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_NAME
        or not value.isprintable()
        or value != value.strip()
    ):
        raise InvalidRequest(
            f"'{key}' must be a name of at most {MAX_NAME} printable characters", param=key
        )
    return value


def _accepted(op: Operation) -> Response:
    return Response.json({"operation": op.to_dict()}, status=202)
