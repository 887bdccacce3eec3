"""Web dashboard (F10): a live view of backends, models and recent requests.

Routes (added by ``setup``):

* ``GET /``                 the page, rendered on the server (complete without JavaScript)
* ``GET /assets/{name}``    its CSS / JS / icon, shipped as package data (no CDN, no build)
* ``GET /ws``               WebSocket: one snapshot, then deltas (history, backends, notices)
* ``GET /dashboard.json``   the same snapshot, for the 5 s polling fallback

Everything shown comes from the registry and the request records, which hold no message
content. Names and errors come from the network, so the page escapes them on the server and
the script only ever sets ``textContent``; a strict Content-Security-Policy backs that up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import orjson
from aiohttp import web

from nexus.dashboard import page
from nexus.dashboard.live import Hub
from nexus.state import STATE

__all__ = ["HUB", "Hub", "setup"]

HUB = web.AppKey("nexus_dashboard_hub", Hub)

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
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


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


def setup(app: web.Application) -> None:
    state = app[STATE]
    hub = Hub(state.registry, uptime=lambda: state.uptime_seconds)
    app[HUB] = hub
    state.recorder.sinks.append(hub.record)
    assets = load_assets()
    urls = {name: f"/assets/{name}?v={a.version}" for name, a in assets.items()}

    async def index(request: web.Request) -> web.Response:
        snap = hub.snapshot()
        body = page.render(snap, assets=urls)
        return web.Response(
            text=body, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
        )

    async def asset(request: web.Request) -> web.Response:
        found = assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        if request.query.get("v") == found.version:
            # The page links versioned URLs: the content at such a URL never changes.
            cache = "public, max-age=31536000, immutable"
        else:
            cache = "no-cache"  # unversioned: revalidate (cheaply, with the ETag)
        headers = {
            "ETag": found.etag,
            "Cache-Control": cache,
            "X-Content-Type-Options": "nosniff",
        }
        if found.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=found.body,
            content_type=found.content_type,
            charset=found.charset,
            headers=headers,
        )

    async def snapshot(request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(hub.snapshot()),
            content_type="application/json",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def websocket(request: web.Request) -> web.StreamResponse:
        return await hub.serve(request)

    app.add_routes(
        [
            web.get("/", index),
            web.get("/assets/{name}", asset),
            web.get("/dashboard.json", snapshot),
            web.get("/ws", websocket),
        ]
    )

    async def start(_: web.Application) -> None:
        await hub.start()

    async def close_viewers(_: web.Application) -> None:
        # on_shutdown runs before aiohttp waits for handlers: open sockets must not hold it up.
        await hub.close_viewers()

    async def stop(_: web.Application) -> None:
        await hub.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(close_viewers)
    app.on_cleanup.append(stop)
