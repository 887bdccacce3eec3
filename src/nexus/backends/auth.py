"""A backend's credentials, sent the same way by traffic and by probes.

Keys come only from the environment variable the config names (``api_key_env``); the
config file never holds one. Each provider expects its key in its own header, and only
there: never in a URL, where proxies and logs would keep it.
"""

from __future__ import annotations

import os

from nexus.registry import Backend


def api_key(backend: Backend) -> str | None:
    """The backend's key, or None when it has none configured (or the variable is empty)."""
    if not backend.api_key_env:
        return None
    return os.environ.get(backend.api_key_env, "").strip() or None


def headers_for(backend: Backend) -> dict[str, str]:
    """The headers that carry ``backend``'s key, as its provider expects them."""
    key = api_key(backend)
    if key is None:
        return {}
    return {"Authorization": f"Bearer {key}"}
