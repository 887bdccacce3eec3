"""Web dashboard (F10): a live view of backends, models and recent requests.

Routes (added by ``Dashboard.add_routes``; the WebSocket is the app's only one):

* ``GET /``                 the page, rendered on the server (complete without JavaScript)
* ``GET /assets/{name}``    its CSS / JS / icon, shipped as package data (no CDN, no build)
* ``GET /ws``               WebSocket: one snapshot, then deltas (history, backends, notices)
* ``GET /dashboard.json``   the same snapshot, for the 5 s polling fallback

The page, the snapshot and the WebSocket answer only requests from Nexus's own pages (or
from no browser): see ``nexus.asgi.guards``.

Everything shown comes from the registry and the request records, which hold no message
content. Names and errors come from the network, so the page escapes them on the server and
the script only ever sets ``textContent``; a strict Content-Security-Policy backs that up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import orjson

from nexus.asgi import Headers, Receive, Scope, Send
from nexus.asgi.guards import Sites
from nexus.asgi.io import header
from nexus.asgi.routes import Request, Response, Router
from nexus.dashboard import page
from nexus.dashboard.live import Hub
from nexus.errors import NotFound
from nexus.state import AppState

__all__ = ["Dashboard", "Hub"]

CONTENT_TYPES = {
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
TEXT_TYPES = {"text/css", "text/javascript", "image/svg+xml", "application/json"}

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS: Headers = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    charset: str | None
    etag: str  # quoted, strong

    @property
    def version(self) -> str:
        return self.etag.strip('"')


def load_assets() -> dict[str, Asset]:
    """Every file of the flat ``static/`` folder, read once, by name (nothing else is served)."""
    assets: dict[str, Asset] = {}
    folder = resources.files(__package__ or "nexus.dashboard").joinpath("static")
    for entry in folder.iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        content_type = CONTENT_TYPES.get(suffix)
        if not entry.is_file() or content_type is None or name.startswith("."):
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        charset = "utf-8" if content_type in TEXT_TYPES else None
        assets[name] = Asset(body, content_type, charset, etag)
    return assets


class Dashboard:
    """The page, its assets, the polling snapshot and the live feed, on the app's router."""

    def __init__(self, state: AppState, sites: Sites) -> None:
        self.hub = Hub(state.registry, uptime=lambda: state.uptime_seconds)
        if state.queue is not None:
            self.hub.queue_depth = state.queue.depth
        self.hub.budget = state.budget
        self.hub.fleet = state.fleet
        self.sites = sites
        state.recorder.sinks.append(self.hub.record)
        self.assets = load_assets()
        self.urls = {name: f"/assets/{name}?v={a.version}" for name, a in self.assets.items()}

    def add_routes(self, router: Router) -> None:
        router.add("GET", "/", self.index)
        router.add("GET", "/assets/{name}", self.asset)
        router.add("GET", "/dashboard.json", self.snapshot)

    async def index(self, request: Request) -> Response:
        self.sites.check(request.scope)
        body = page.render(self.hub.snapshot(), assets=self.urls).encode()
        return Response(body, ctype=b"text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def asset(self, request: Request) -> Response:
        found = self.assets.get(request.params["name"])
        if found is None:
            raise NotFound(f"no such asset: {request.params['name'][:100]}")
        if request.query("v") == found.version:
            # The page links versioned URLs: the content at such a URL never changes.
            cache = b"public, max-age=31536000, immutable"
        else:
            cache = b"no-cache"  # unversioned: revalidate (cheaply, with the ETag)
        headers = [(b"etag", found.etag.encode()), (b"cache-control", cache)]
        if found.etag in (request.header("If-None-Match") or ""):
            return Response(b"", status=304, headers=headers)
        ctype = found.content_type + (f"; charset={found.charset}" if found.charset else "")
        return Response(found.body, ctype=ctype.encode(), headers=headers)

    async def snapshot(self, request: Request) -> Response:
        self.sites.check(request.scope)
        return Response(
            orjson.dumps(self.hub.snapshot()), headers=[(b"cache-control", b"no-store")]
        )

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.sites.host_allowed(header(scope, b"host")) or not self.sites.same_origin(scope):
            # WebSockets skip CORS: without this, any web page could read the dashboard.
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.hub.serve(receive, send)
