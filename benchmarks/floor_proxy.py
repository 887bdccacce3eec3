"""The floor: the least a Python (aiohttp) pass-through proxy can do.

An aiohttp server and one aiohttp ``ClientSession``: forwards method, path and body to the
upstream; relays a ``text/event-stream`` answer chunk by chunk as it arrives, and any
other answer as one body. No parsing, no routing, no logging, no metrics: whatever Nexus
costs above this is what its features cost. Runs on uvloop, 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

from benchmarks.upstream import run_loop

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    async with session.request(
        request.method, request.app[UPSTREAM] + request.path_qs, data=body, headers=headers
    ) as resp:
        ctype = resp.headers.get("Content-Type", "application/json")
        if ctype.startswith("text/event-stream"):
            out = web.StreamResponse(status=resp.status, headers={"Content-Type": ctype})
            await out.prepare(request)
            async for piece in resp.content.iter_any():
                await out.write(piece)
            await out.write_eof()
            return out
        data = await resp.read()
        return web.Response(body=data, status=resp.status, headers={"Content-Type": ctype})


async def _session(app: web.Application) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    app[SESSION] = aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
    )


async def _close(app: web.Application) -> None:
    await app[SESSION].close()


def build(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.on_startup.append(_session)
    app.on_cleanup.append(_close)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(port: int, upstream: str) -> None:
    runner = web.AppRunner(build(upstream), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096, reuse_address=True)
    await site.start()
    print(f"floor proxy on http://127.0.0.1:{port} -> {upstream}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:18001")
    args = parser.parse_args(argv)
    if not args.upstream.startswith("http://127.0.0.1:"):
        parser.error("the upstream must be on 127.0.0.1")
    run_loop(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
