"""The admin API of tenants and keys, for ``nexus tenants`` and ``nexus keys``.

``GET|POST /admin/tenants``, ``GET|PATCH|DELETE /admin/tenants/{name}``,
``GET /admin/usage[/{name}]?since=YYYY-MM-DD``, ``GET|POST /admin/keys`` (``?tenant=``) and
``DELETE /admin/keys/{id}`` (revokes). Protected like the rest of the admin API
(``nexus.api.admin.authorize``); with auth off they answer 409, saying so.
A new key is in the answer to its creation, once: only its hash is kept.
"""

from __future__ import annotations

from datetime import date, timedelta

from nexus.api.admin import authorize, json_object
from nexus.asgi.guards import Sites, check_admin_body
from nexus.asgi.routes import Request, Response, Router
from nexus.errors import InvalidRequest, NexusError
from nexus.state import AppState
from nexus.tenants.service import Tenants

USAGE_DAYS = 31  # without ?since=: the last month


class AuthDisabled(NexusError):
    status = 409
    type = "invalid_request_error"
    code = "auth_disabled"


class TenantsAdmin:
    def __init__(self, state: AppState, sites: Sites) -> None:
        self.state = state
        self.sites = sites

    def add_routes(self, router: Router) -> None:
        router.add("GET", "/admin/tenants", self.list_tenants)
        router.add("POST", "/admin/tenants", self.create_tenant)
        router.add("GET", "/admin/tenants/{name}", self.show_tenant)
        router.add("PATCH", "/admin/tenants/{name}", self.update_tenant)
        router.add("DELETE", "/admin/tenants/{name}", self.delete_tenant)
        router.add("GET", "/admin/usage", self.usage)
        router.add("GET", "/admin/usage/{name}", self.usage)
        router.add("GET", "/admin/keys", self.list_keys)
        router.add("POST", "/admin/keys", self.create_key)
        router.add("DELETE", "/admin/keys/{id}", self.revoke_key)

    def _tenants(self, request: Request, *, body: bool = False) -> Tenants:
        authorize(request, self.sites)
        if body:
            check_admin_body(request.scope)
        if self.state.tenants is None:
            raise AuthDisabled("auth is not enabled: set [auth] enabled = true to use tenants")
        return self.state.tenants

    async def list_tenants(self, request: Request) -> Response:
        tenants = self._tenants(request)
        used = tenants.summary()
        return Response.json(
            {
                "tenants": [
                    {**t.to_dict(), "keys": _key_count(tenants, t.name), "cycle": used[t.name]}
                    for t in tenants.by_name.values()
                ]
            }
        )

    async def show_tenant(self, request: Request) -> Response:
        tenants = self._tenants(request)
        tenant = tenants.get(request.params["name"])
        keys = [k.to_dict() for k in tenants.by_id.values() if k.tenant == tenant.name]
        return Response.json(
            {**tenant.to_dict(), "keys": keys, "cycle": tenants.summary()[tenant.name]}
        )

    async def create_tenant(self, request: Request) -> Response:
        tenants = self._tenants(request, body=True)
        tenant = await tenants.create(await json_object(request))
        return Response.json(tenant.to_dict(), status=201)

    async def update_tenant(self, request: Request) -> Response:
        tenants = self._tenants(request, body=True)
        tenant = await tenants.update(request.params["name"], await json_object(request))
        return Response.json(tenant.to_dict())

    async def delete_tenant(self, request: Request) -> Response:
        tenants = self._tenants(request)
        tenant = await tenants.delete(request.params["name"])
        return Response.json({"deleted": tenant.to_dict()})

    async def usage(self, request: Request) -> Response:
        tenants = self._tenants(request)
        since = request.query("since") or (date.today() - timedelta(days=USAGE_DAYS)).isoformat()
        try:
            date.fromisoformat(since)
        except ValueError:
            raise InvalidRequest("'since' must be a date, YYYY-MM-DD", param="since") from None
        name = request.params.get("name")
        if name is not None:
            tenants.get(name)  # 404 for an unknown tenant
        rows = await tenants.usage(name, since)
        return Response.json(
            {
                "since": since,
                "usage": [
                    {
                        "tenant": r.tenant,
                        "day": r.day,
                        "model": r.model,
                        "requests": r.requests,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                        "cost_usd": round(r.cost_usd, 6),
                    }
                    for r in rows
                ],
            }
        )

    async def list_keys(self, request: Request) -> Response:
        tenants = self._tenants(request)
        wanted = request.query("tenant")
        keys = [k.to_dict() for k in tenants.by_id.values() if wanted in (None, k.tenant)]
        return Response.json({"keys": keys})

    async def create_key(self, request: Request) -> Response:
        tenants = self._tenants(request, body=True)
        body = await json_object(request)
        tenant = body.get("tenant")
        if not isinstance(tenant, str):
            raise InvalidRequest("'tenant' must name a tenant", param="tenant")
        expires = body.get("expires")
        if expires is not None and (
            isinstance(expires, bool) or not isinstance(expires, int | float)
        ):
            raise InvalidRequest("'expires' must be a Unix time or null", param="expires")
        key, record = await tenants.create_key(tenant, expires)
        return Response.json({**record.to_dict(), "key": key}, status=201)

    async def revoke_key(self, request: Request) -> Response:
        tenants = self._tenants(request)
        record = await tenants.revoke(request.params["id"])
        return Response.json({"revoked": record.to_dict()})


def _key_count(tenants: Tenants, name: str) -> int:
    return sum(1 for k in tenants.by_id.values() if k.tenant == name and not k.revoked)
