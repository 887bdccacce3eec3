"""Who may reach the browser-facing surfaces (admin API, dashboard), and with what bodies.

A browser on the Nexus host is a loopback client, so "loopback is trusted" alone would let
any web page it visits drive the admin API. Three rules close that:

* **Origin.** A request that carries ``Origin`` must come from Nexus's own origin (scheme,
  host and port). Browsers send it on every cross-site POST, DELETE and WebSocket.
* **Host.** The ``Host`` must be one Nexus is known by: an IP address, ``localhost``, this
  machine's name (``name`` and ``name.local``) or ``server.allowed_hosts``. A DNS-rebinding
  page reaches us under the attacker's own name, with a matching Origin; this refuses it.
* **Content type.** Admin bodies must be ``application/json``, which a cross-site page can
  only send after a CORS preflight (which Nexus never grants). API bodies may not use the
  three types a form or a no-cors ``fetch`` sends without a preflight.

A holder of the admin token is not a browser's ambient credential, so it skips the first
two rules (scripts on other machines use their own host names).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from nexus.asgi import Scope
from nexus.asgi.io import header, headers
from nexus.errors import Forbidden, UnsupportedMediaType

# What a cross-site <form> or a no-cors fetch() can send without a CORS preflight.
SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def media_type(scope: Scope) -> str:
    return (header(scope, b"content-type") or "").partition(";")[0].strip().lower()


def check_api_body(scope: Scope) -> None:
    """415 for bodies a cross-site page could post without a preflight; a request with no
    content type at all stays accepted (plenty of scripts send none)."""
    if headers(scope).get(b"content-type") == b"application/json":
        return  # (what every client sends: no parsing)
    kind = media_type(scope)
    if kind in SIMPLE_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {kind} is not accepted: send the body as application/json"
        )


def check_admin_body(scope: Scope) -> None:
    kind = media_type(scope)
    if kind != "application/json":
        raise UnsupportedMediaType(
            f"admin requests must send Content-Type: application/json, not {kind or 'none'}"
        )


class Sites:
    """The names this Nexus answers to, and the same-origin rule for browsers."""

    def __init__(self, allowed_hosts: list[str]) -> None:
        name = socket.gethostname().lower().rstrip(".")
        self.names = {"localhost", name, f"{name}.local", *(h.lower() for h in allowed_hosts)}

    def host_allowed(self, host: str | None) -> bool:
        if not host:
            return False
        name = _host_name(host)
        if name is None:
            return False
        return name in self.names or _is_ip(name)

    def same_origin(self, scope: Scope) -> bool:
        origin = header(scope, b"origin")
        if origin is None:
            return True  # not a browser, or a same-origin GET
        own = _origin_tuple(f"{scope.get('scheme', 'http')}://{header(scope, b'host') or ''}")
        theirs = _origin_tuple(origin)
        return theirs is not None and own is not None and theirs == own

    def check(self, scope: Scope) -> None:
        """Forbidden unless the request comes from a page of ours (or from no browser)."""
        if not self.host_allowed(header(scope, b"host")):
            raise Forbidden(
                "Host header is not a name this Nexus serves "
                "(add it to server.allowed_hosts if it is yours)"
            )
        if not self.same_origin(scope):
            raise Forbidden("cross-origin request refused")


def _host_name(host: str) -> str | None:
    try:
        parts = urlsplit(f"//{host}")
        name = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _origin_tuple(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None or scheme not in ("http", "https"):
        return None
    return scheme, parts.hostname.lower().rstrip("."), port
