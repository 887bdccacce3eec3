"""The uvicorn floor: the least a bare-ASGI pass-through proxy on Nexus' own stack can do.

uvicorn (uvloop + httptools) calls one ASGI function; it reads the body, forwards method,
path and body with ``nexus.transport.Pool`` (the keep-alive client Nexus uses for its
backends), and relays a ``text/event-stream`` answer chunk by chunk as it arrives, any
other answer as one body. One ``asyncio.timeout`` per request, as Nexus has at least that.
No parsing, no routing, no logging, no metrics: whatever Nexus costs above this is what its
features cost, on the same server and client code. Runs on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn

from benchmarks.upstream import run_loop
from nexus.asgi import Receive, Scope, Send
from nexus.transport import Answer, Pool

# Covers the slowest benchmark stream (the held ones, ~10 s) with room to spare.
REQUEST_SECONDS = 120.0


class Floor:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.pool = Pool(5.0, REQUEST_SECONDS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; nothing else reaches here
        async with asyncio.timeout(REQUEST_SECONDS):
            body = await read_body(receive)
            path = scope["raw_path"].decode("latin-1")
            if scope["query_string"]:
                path += "?" + scope["query_string"].decode("latin-1")
            ctype = "application/json"
            for name, value in scope["headers"]:
                if name == b"content-type":
                    ctype = value.decode("latin-1")
            answer = await self.pool.request(
                self.upstream, scope["method"], path, body, {"Content-Type": ctype}
            )
            try:
                await relay(answer, send)
            finally:
                answer.release()


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    parts = [message.get("body", b"")]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def relay(answer: Answer, send: Send) -> None:
    # No per-read timer (None): the request's one timeout bounds every read.
    ctype = answer.headers.get("content-type", "application/json").encode("latin-1")
    if ctype.startswith(b"text/event-stream"):
        head = [(b"content-type", ctype)]  # no length: uvicorn sends it chunked
        await send({"type": "http.response.start", "status": answer.status, "headers": head})
        while piece := await answer.read_chunk(None):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    data = await answer.read(None)
    head = [(b"content-type", ctype), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": answer.status, "headers": head})
    await send({"type": "http.response.body", "body": data})


async def serve(port: int, upstream: str) -> None:
    floor = Floor(upstream)
    config = uvicorn.Config(
        floor,
        host="127.0.0.1",
        port=port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
    print(f"uvicorn floor on http://127.0.0.1:{port} -> {upstream}", flush=True)
    try:
        await uvicorn.Server(config).serve()
    finally:
        floor.pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor_asgi")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:18001")
    args = parser.parse_args(argv)
    if not args.upstream.startswith("http://127.0.0.1:"):
        parser.error("the upstream must be on 127.0.0.1")
    run_loop(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
