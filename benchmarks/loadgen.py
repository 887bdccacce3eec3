"""The load generator: raw asyncio HTTP/1.1 keep-alive clients (uvloop), one process.

Run by ``benchmarks.run`` as a child process (so it never shares a GIL with what it
measures): ``python -m benchmarks.loadgen '<json spec>'`` prints one JSON result on
stdout. The same client code measures every target, so its own cost cancels out.

Modes:
* ``latency``: sequential requests, one keep-alive connection per target, round-robin
  across targets (the order rotates every round); per-request latency samples.
* ``throughput``: ``conns`` connections each sending back to back for ``duration`` seconds
  after ``warmup``; requests completed in the window per second.
* ``stream``: sequential streamed requests, round-robin; time to the first SSE event and
  to the end of the stream, and a check that every event arrived.
* ``hold``: ``conns`` concurrent slow streams, all open at once; errors and peak open count.
Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from benchmarks.http1 import Message, ParseError
from benchmarks.upstream import run_loop

REQUEST_TIMEOUT = 30.0
MAX_ERRORS_KEPT = 5


@dataclass(slots=True)
class Target:
    name: str
    host: str
    port: int
    prefix: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def request(self, path: str, body: bytes) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        head = (
            f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        )
        return head.encode() + body

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        return cls(**data)


class Conn(asyncio.Protocol):
    """One keep-alive connection; ``send`` writes a request and awaits its response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.msg: Message | None = None
        self.waiter: asyncio.Future[Message] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look like them.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        msg, waiter = self.msg, self.waiter
        if msg is None or waiter is None or waiter.done():
            return
        try:
            rest = msg.feed(data)
        except (ParseError, ValueError) as exc:
            waiter.set_exception(exc)
            return
        if rest is not None:
            self.msg = None
            waiter.set_result(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        msg, waiter = self.msg, self.waiter
        if waiter is None or waiter.done():
            return
        if msg is not None and msg.eof():
            waiter.set_result(msg)
        else:
            waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def send(self, data: bytes) -> Message:
        assert self.transport is not None
        self.msg = Message(is_response=True)
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    """A target's keep-alive connection, reopened when the server closes it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.conn: Conn | None = None

    async def call(self, data: bytes, timeout: float = REQUEST_TIMEOUT) -> Message:
        async with asyncio.timeout(timeout):
            if self.conn is None or self.conn.closed:
                loop = asyncio.get_running_loop()
                _, conn = await loop.create_connection(Conn, self.target.host, self.target.port)
                self.conn = conn
            msg = await self.conn.send(data)
        if not msg.keep_alive:
            self.close()
        return msg

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Errors:
    def __init__(self) -> None:
        self.count = 0
        self.samples: list[str] = []

    def add(self, what: str) -> None:
        self.count += 1
        if len(self.samples) < MAX_ERRORS_KEPT:
            self.samples.append(what)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "samples": self.samples}


def check_json(msg: Message) -> str | None:
    if msg.status != 200:
        return f"HTTP {msg.status}: {bytes(msg.body[:200])!r}"
    if b'"choices"' not in msg.body:
        return f"unexpected body {bytes(msg.body[:200])!r}"
    return None


def check_stream(msg: Message, chunks: int) -> str | None:
    if msg.status != 200:
        return f"HTTP {msg.status}: {bytes(msg.body[:200])!r}"
    events = msg.body.count(b"data: ")
    if not msg.body.endswith(b"data: [DONE]\n\n") or events != chunks + 1:
        return f"stream had {events} events (want {chunks} + [DONE]), usage chunk or [DONE] off"
    return None


# -- modes ----------------------------------------------------------------------------


async def interleaved(
    spec: dict[str, Any], targets: list[Target], body: bytes
) -> AsyncIterator[tuple[int, int, float, Any, str | None]]:
    """Round-robin one request per target per round (the order rotating every round), for
    warm-up + n rounds or until max_seconds. Yields (round, target index, start time,
    reply, or None and the error when the call failed)."""
    clients = [Client(t) for t in targets]
    reqs = [t.request("/v1/chat/completions", body) for t in targets]
    deadline = time.monotonic() + spec.get("max_seconds", 300)
    try:
        for i in range(spec["warmup"] + spec["n"]):
            if time.monotonic() > deadline:
                break
            for k in range(len(targets)):
                j = (i + k) % len(targets)
                started = time.perf_counter()
                try:
                    msg = await clients[j].call(reqs[j])
                except (OSError, TimeoutError, ParseError, ValueError) as exc:
                    clients[j].close()
                    yield i, j, started, None, repr(exc)
                    continue
                yield i, j, started, msg, None
    finally:
        for c in clients:
            c.close()


async def latency(spec: dict[str, Any]) -> dict[str, Any]:
    targets = [Target.from_dict(t) for t in spec["targets"]]
    samples: list[list[float]] = [[] for _ in targets]
    errors = [Errors() for _ in targets]
    headers: list[dict[str, str]] = [{} for _ in targets]
    async for i, j, started, msg, failed in interleaved(spec, targets, spec["body"].encode()):
        elapsed = time.perf_counter() - started
        if failed is not None:
            errors[j].add(failed)
            continue
        problem = check_json(msg)
        if problem:
            errors[j].add(problem)
        elif i >= spec["warmup"]:
            samples[j].append(elapsed * 1e6)
        if not headers[j]:
            headers[j] = msg.headers
    return {
        t.name: {"us": s, "errors": e.to_dict(), "headers": h}
        for t, s, e, h in zip(targets, samples, errors, headers, strict=True)
    }


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target.from_dict(spec["target"])
    data = target.request("/v1/chat/completions", spec["body"].encode())
    conns, duration, warmup = spec["conns"], spec["duration"], spec["warmup"]
    errors = Errors()
    lat: list[float] = []
    start = time.perf_counter()
    window = (start + warmup, start + warmup + duration)
    cap = spec.get("max_requests_per_conn", 1_000_000)

    async def worker() -> int:
        client = Client(target)
        done = 0
        try:
            for _ in range(cap):
                t0 = time.perf_counter()
                if t0 >= window[1]:
                    break
                try:
                    msg = await client.call(data, timeout=10)
                except (OSError, TimeoutError, ParseError, ValueError) as exc:
                    errors.add(repr(exc))
                    client.close()
                    await asyncio.sleep(0.01)
                    continue
                t1 = time.perf_counter()
                if msg.status != 200:
                    errors.add(f"HTTP {msg.status}")
                elif window[0] <= t1 < window[1]:
                    done += 1
                    lat.append((t1 - t0) * 1e6)
        finally:
            client.close()
        return done

    counts = await asyncio.gather(*(worker() for _ in range(conns)))
    lat.sort()
    return {
        "requests": sum(counts),
        "rps": sum(counts) / duration,
        "errors": errors.to_dict(),
        "p50_us": lat[len(lat) // 2] if lat else None,
        "p99_us": lat[int(len(lat) * 0.99)] if lat else None,
    }


async def stream(spec: dict[str, Any]) -> dict[str, Any]:
    targets = [Target.from_dict(t) for t in spec["targets"]]
    chunks = spec["chunks"]
    ttfc: list[list[float]] = [[] for _ in targets]
    ttlc: list[list[float]] = [[] for _ in targets]
    errors = [Errors() for _ in targets]
    async for i, j, started, msg, failed in interleaved(spec, targets, spec["body"].encode()):
        ended = time.perf_counter()
        if failed is not None:
            errors[j].add(failed)
            continue
        problem = check_stream(msg, chunks)
        if problem or msg.first_event_at is None:
            errors[j].add(problem or "no event")
        elif i >= spec["warmup"]:
            ttfc[j].append((msg.first_event_at - started) * 1e6)
            ttlc[j].append((ended - started) * 1e6)
    return {
        t.name: {"ttfc_us": a, "ttlc_us": b, "errors": e.to_dict()}
        for t, a, b, e in zip(targets, ttfc, ttlc, errors, strict=True)
    }


async def hold(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target.from_dict(spec["target"])
    data = target.request("/v1/chat/completions", spec["body"].encode())
    conns, chunks = spec["conns"], spec["chunks"]
    errors = Errors()
    state = {"open": 0, "max_open": 0, "done": 0}
    started = time.perf_counter()

    async def one() -> None:
        client = Client(target)
        try:
            call = asyncio.ensure_future(client.call(data, timeout=spec["timeout"]))
            # Count the stream as open once its first event arrived.
            for _ in range(int(spec["timeout"] * 20)):
                msg = client.conn.msg if client.conn else None
                if call.done() or (msg is not None and msg.first_event_at is not None):
                    break
                await asyncio.sleep(0.05)
            state["open"] += 1
            state["max_open"] = max(state["max_open"], state["open"])
            try:
                result = await call
            finally:
                state["open"] -= 1
            problem = check_stream(result, chunks)
            if problem:
                errors.add(problem)
            else:
                state["done"] += 1
        except (OSError, TimeoutError, ParseError, ValueError) as exc:
            errors.add(repr(exc))
        finally:
            client.close()

    tasks = []
    for i in range(conns):
        tasks.append(asyncio.ensure_future(one()))
        if i % 100 == 99:
            await asyncio.sleep(0.02)  # open in waves, not one SYN storm
    await asyncio.gather(*tasks)
    return {
        "conns": conns,
        "completed": state["done"],
        "max_open": state["max_open"],
        "seconds": time.perf_counter() - started,
        "errors": errors.to_dict(),
    }


MODES = {"latency": latency, "throughput": throughput, "stream": stream, "hold": hold}


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


async def _main(spec: dict[str, Any]) -> None:
    result = await MODES[spec["mode"]](spec)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    sys.stdout.flush()


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    raise_fd_limit(spec.get("conns", 0) + 256)
    run_loop(_main(spec))


if __name__ == "__main__":
    main()
