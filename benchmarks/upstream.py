"""A fast fake OpenAI upstream on raw asyncio protocols (uvloop), for benchmarks only.

Run on its own (``python -m benchmarks.upstream --port 18001``) to put another gateway in
front of it. Models (``GET /v1/models``), all answering at once; they differ in how a
stream is paced:

* ``bench-model``: ``--stream-delay-ms`` between two chunks (default 0: each chunk its own
  write, with one event-loop turn between two: a burst);
* ``bench-paced``: ``--paced-delay-ms`` between two chunks (default 1 ms);
* ``bench-slow``: ``--slow-delay`` seconds between two chunks (default 1 s).

Non-streaming chat: ~300 bytes with usage. Streaming: ``max_tokens`` content chunks
(default 16), then the usage-only chunk (``"choices": []``) when
``stream_options.include_usage`` is set, then ``[DONE]``. Also ``POST /v1/embeddings`` and
``GET /health``. Binds to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any, cast

import orjson

from benchmarks.http1 import Message, ParseError, chunk

MODELS = ("bench-model", "bench-paced", "bench-slow")
CONTEXT = 8192
CREATED = 1_700_000_000
DEFAULT_CHUNKS = 16
MAX_CHUNKS = 10_000


def _response(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n\r\n%b" % (
        status.encode(),
        ctype,
        len(body),
        body,
    )


MODELS_BODY = orjson.dumps(
    {
        "object": "list",
        "data": [
            {
                "id": m,
                "object": "model",
                "created": CREATED,
                "owned_by": "bench",
                "max_model_len": CONTEXT,
            }
            for m in MODELS
        ],
    }
)
MODELS_RESPONSE = _response("200 OK", MODELS_BODY)
HEALTH_RESPONSE = _response("200 OK", b'{"status":"ok"}')
NOT_FOUND = _response("404 Not Found", b'{"error":{"message":"not found","type":"not_found"}}')
BAD_REQUEST = _response(
    "400 Bad Request", b'{"error":{"message":"bad request","type":"invalid_request_error"}}'
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
USAGE = {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}


def completion(model: str) -> bytes:
    return _response(
        "200 OK",
        orjson.dumps(
            {
                "id": "chatcmpl-bench0000000000000001",
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello! A short answer."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
        ),
    )


def embedding(model: str) -> bytes:
    return _response(
        "200 OK",
        orjson.dumps(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.125] * 16}],
                "model": model,
                "usage": {"prompt_tokens": 8, "total_tokens": 8},
            }
        ),
    )


def stream_events(model: str, count: int, include_usage: bool) -> list[bytes]:
    """The SSE events of one streamed answer, each framed as an HTTP chunk."""
    base: dict[str, Any] = {
        "id": "chatcmpl-bench0000000000000002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
    }
    if include_usage:
        base["usage"] = None
    events = []
    for i in range(count):
        delta = {"role": "assistant", "content": "Hi"} if i == 0 else {"content": f" tok{i}"}
        last = i == count - 1
        choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
        events.append({**base, "choices": [choice]})
    if include_usage:
        events.append({**base, "choices": [], "usage": USAGE})
    out = [chunk(b"data: " + orjson.dumps(e) + b"\n\n") for e in events]
    out.append(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    return out


class Answers:
    """Pre-rendered answers, cached per (model, chunks, usage): the hot path only writes."""

    def __init__(self, stream_delay: float, paced_delay: float, slow_delay: float) -> None:
        self.delays = {"bench-paced": paced_delay, "bench-slow": slow_delay}
        self.stream_delay = stream_delay
        self._cache: dict[tuple[str, str, int, bool], Any] = {}

    def get(self, kind: str, model: str, count: int = 0, usage: bool = False) -> Any:
        key = (kind, model, count, usage)
        hit = self._cache.get(key)
        if hit is None:
            if kind == "chat":
                hit = completion(model)
            elif kind == "embeddings":
                hit = embedding(model)
            else:
                hit = stream_events(model, count, usage)
            if len(self._cache) < 256:
                self._cache[key] = hit
        return hit


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.transport: asyncio.Transport | None = None
        self.msg = Message(is_response=False)
        self.busy = False  # a stream is being written
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look like them.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            rest = self.msg.feed(data)
            while rest is not None:
                msg = self.msg
                self.msg = Message(is_response=False)
                self.handle(msg)
                rest = self.msg.feed(rest) if rest else None
        except (ParseError, ValueError):
            assert self.transport is not None
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def handle(self, msg: Message) -> None:
        transport = self.transport
        assert transport is not None
        path = msg.path.split("?", 1)[0]
        if msg.method == "GET":
            if path == "/v1/models":
                transport.write(MODELS_RESPONSE)
            elif path in ("/health", "/healthz", "/"):
                transport.write(HEALTH_RESPONSE)
            else:
                transport.write(NOT_FOUND)
            return
        if msg.method != "POST" or path not in ("/v1/chat/completions", "/v1/embeddings"):
            transport.write(NOT_FOUND)
            return
        try:
            body = orjson.loads(msg.body)
            model = str(body.get("model") or MODELS[0])
        except (orjson.JSONDecodeError, AttributeError):
            transport.write(BAD_REQUEST)
            return
        if path == "/v1/embeddings":
            transport.write(self.answers.get("embeddings", model))
        elif body.get("stream"):
            count = min(int(body.get("max_tokens") or DEFAULT_CHUNKS), MAX_CHUNKS)
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = self.answers.get("stream", model, count, usage)
            delay = self.answers.delays.get(model, self.answers.stream_delay)
            self.busy = True
            self.close_after = not msg.keep_alive
            task = asyncio.get_running_loop().create_task(self.stream(events, delay))
            TASKS.add(task)
            task.add_done_callback(TASKS.discard)
        else:
            transport.write(self.answers.get("chat", model))
        if not msg.keep_alive and not self.busy:
            transport.close()

    async def stream(self, events: list[bytes], delay: float) -> None:
        transport = self.transport
        assert transport is not None
        try:
            transport.write(STREAM_HEAD + events[0])
            for event in events[1:]:
                await asyncio.sleep(delay)
                if transport.is_closing():
                    return
                transport.write(event)
        finally:
            self.busy = False
            if self.close_after:
                transport.close()


TASKS: set[asyncio.Task[None]] = set()


async def serve(host: str, port: int, answers: Answers) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(answers), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"upstream listening on http://{host}:{bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1"])
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--stream-delay-ms", type=float, default=0.0)
    parser.add_argument("--paced-delay-ms", type=float, default=1.0)
    parser.add_argument("--slow-delay", type=float, default=1.0)
    args = parser.parse_args(argv)
    answers = Answers(args.stream_delay_ms / 1000, args.paced_delay_ms / 1000, args.slow_delay)
    run_loop(serve(args.host, args.port, answers))


def run_loop(coro: Any) -> None:
    """Run ``coro`` on uvloop when available; exit quietly on Ctrl-C / SIGTERM."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            asyncio.run(coro)
        else:
            uvloop.run(coro)


if __name__ == "__main__":
    main()
