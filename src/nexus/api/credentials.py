"""What a request presents as a credential, read the same way by everyone who checks one:
the admin API (``nexus.api.admin``), the dashboard's gate (``nexus.api.gate``) and tenants'
API keys (``nexus.tenants.service``).

Header values reach us as text whose characters are the header's bytes (latin-1). A secret
is compared as its UTF-8 bytes, so a token outside latin-1 (``NEXUS_ADMIN_TOKEN="clé-🔑"``)
works as curl sends it (UTF-8), and one within latin-1 still works as Python's http.client
sends it (latin-1).
"""

from __future__ import annotations

import hmac


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value: the scheme in any case, the
    token without the whitespace around it; None for another scheme or no token."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None


def secret_bytes(secret: str) -> bytes:
    """A secret from the environment as bytes: UTF-8, and the bytes it was given as when they
    were not UTF-8 (Python reads those as lone surrogates, which UTF-8 cannot encode)."""
    return secret.encode("utf-8", "surrogateescape")


def presents(sent: str, secret: str) -> bool:
    """Whether ``sent`` (text whose characters are the bytes received, as header values are)
    is ``secret``: its bytes in UTF-8, or its characters within latin-1. Constant time."""
    try:
        received = sent.encode("latin-1")
    except UnicodeEncodeError:
        return False  # (not what a request can carry)
    want = secret_bytes(secret)
    as_bytes = hmac.compare_digest(received, want)
    as_text = hmac.compare_digest(sent.encode(), want)  # (latin-1 text: always UTF-8-able)
    return as_bytes | as_text
