"""What a request presents as a credential, read the same way by everyone who checks one:
the admin API (``nexus.api.admin``), the dashboard's gate (``nexus.api.gate``) and tenants'
API keys (``nexus.tenants.service``).
"""

from __future__ import annotations


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value: the scheme in any case, the
    token without the whitespace around it; None for another scheme or no token."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None
