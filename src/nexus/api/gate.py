"""With ``[auth] enabled``: who may reach the endpoints that are not proxied.

- The API's listings and helpers (``/v1/models``, ``/v1/messages/count_tokens``, Ollama's
  ``/api/tags``, ``/api/show``...) need a tenant's key, like the proxied endpoints (which the
  pipeline checks itself); the tenant is left in the scope for them (``/v1/models`` lists only
  its models).
- What shows everybody's traffic (the dashboard, its feed, ``/dashboard.json``,
  ``/v1/stats``) answers loopback clients and holders of the admin token
  (``NEXUS_ADMIN_TOKEN``) only. A browser presents the token once, as ``/?token=...``; it is
  then kept in an HttpOnly, SameSite=Strict cookie (percent-encoded where a cookie cannot
  hold it as it is: any token works), and the URL loses it.
- ``/health``, ``/metrics`` and the assets stay open; the admin API keeps its own rule.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, quote_from_bytes, unquote

from nexus.api.admin import ADMIN_TOKEN_ENV, is_loopback
from nexus.api.credentials import bearer_token, presents, secret_bytes
from nexus.api.status import TENANT
from nexus.asgi import Scope
from nexus.asgi.io import header
from nexus.asgi.routes import Response
from nexus.errors import Forbidden
from nexus.tenants.service import Tenants

COOKIE = "nexus_admin"
VIEWS = frozenset({"/", "/dashboard.json", "/v1/stats", "/ws"})
API_PREFIXES = ("/v1/", "/api/")


class Gate:
    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants

    def check(self, scope: Scope) -> Response | None:
        """Raises a NexusError for a caller who may not; a response to send instead of the
        endpoint's (the token's cookie) or None to go on."""
        path = scope["path"]
        if path in VIEWS:
            return self.viewer(scope)
        if path.startswith(API_PREFIXES):
            scope[TENANT] = self.tenants.authenticate(scope)
        return None

    def viewer(self, scope: Scope) -> Response | None:
        token = os.environ.get(ADMIN_TOKEN_ENV, "")
        client = scope.get("client")
        if token and scope["path"] == "/":
            # (Each value as text whose characters are its bytes, as header values are.)
            query = scope.get("query_string", b"").decode("latin-1")
            offered = parse_qs(query, encoding="latin-1").get("token")
            if offered and presents(offered[0], token):
                cookie = f"{COOKIE}={cookie_value(token)}; Path=/; HttpOnly; SameSite=Strict"
                headers = [(b"location", b"/"), (b"set-cookie", cookie.encode("ascii"))]
                return Response(b"", status=303, headers=headers)
        if client and is_loopback(client[0]):
            return None
        if token and presents(presented_admin_token(scope), token):
            return None
        raise Forbidden(
            "with auth enabled, the dashboard and /v1/stats answer loopback clients and "
            f"holders of ${ADMIN_TOKEN_ENV} only"
        )


# What a cookie value may hold as it is (RFC 6265's cookie-octet), but "%", which escapes
# the rest: a token with spaces, ";", quotes, "%" or characters beyond ASCII (its UTF-8
# bytes) is kept percent-encoded, any other as it is.
COOKIE_SAFE = "!#$&'()*+/:<=>?@[]^`{|}"


def cookie_value(token: str) -> str:
    return quote_from_bytes(secret_bytes(token), safe=COOKIE_SAFE)


def presented_admin_token(scope: Scope) -> str:
    """The admin token a request carries: as a bearer token, or the dashboard's cookie (as
    text whose characters are its bytes, like a header value)."""
    if (token := bearer_token(header(scope, b"authorization"))) is not None:
        return token
    for part in (header(scope, b"cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return unquote(value, encoding="latin-1")
    return ""
