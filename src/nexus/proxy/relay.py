"""Relay of a streamed (SSE) answer, event by event.

The client's response is only started once the first upstream event is in hand, so a
backend that accepts a stream and then fails or stalls before producing anything is still
failed over. From then on the backend is fixed; a failure ends the stream with one
OpenAI-shaped error event.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web

from nexus.errors import BackendBadResponse, BackendTimeout, BackendUnreachable, NexusError
from nexus.proxy.sse import DONE, SSEParser, event_data, frame
from nexus.records import RequestRecord
from nexus.routing.requirements import Requirements
from nexus.routing.router import Plan
from nexus.transport import UpstreamError, describe

if TYPE_CHECKING:
    from nexus.proxy.forward import Forwarder, Upstream

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class StreamRelay:
    __slots__ = (
        "done",
        "first_event_ms",
        "forwarder",
        "parser",
        "plan",
        "record",
        "request",
        "rewrite_model",
        "strip_usage",
        "upstream",
    )

    def __init__(
        self,
        forwarder: Forwarder,
        request: web.Request,
        upstream: Upstream,
        plan: Plan,
        req: Requirements,
        record: RequestRecord,
    ) -> None:
        self.forwarder = forwarder
        self.request = request
        self.upstream = upstream
        self.plan = plan
        self.record = record
        self.parser = SSEParser()
        self.done = False
        self.first_event_ms = 0.0
        self.rewrite_model = upstream.route.model != plan.requested
        # We asked for usage on the client's behalf: drop the extra usage-only chunk.
        self.strip_usage = not req.include_usage

    async def run(self) -> web.StreamResponse:
        events = await self._first_events()
        response = web.StreamResponse(
            status=200,
            headers={**SSE_HEADERS, **self.forwarder.route_headers(self.upstream, self.record)},
        )
        await response.prepare(self.request)
        self.record.status = 200
        error = await self._pump(response, events)
        if error is not None:
            self._fail(error)
            await self._write_quietly(response, frame(error.body(self.record.request_id)))
        else:
            self.forwarder.registry.update_latency(self.upstream.backend, self.first_event_ms)
        return response

    async def _first_events(self) -> list[bytes]:
        """Read until the first whole event; failures here can still fail over."""
        backend = self.upstream.backend
        resp = self.upstream.resp
        remaining = self.forwarder.ttfb - (time.perf_counter() - self.upstream.sent_at)
        events: list[bytes] = []
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                while not events:
                    chunk = await resp.read_chunk(None)
                    if not chunk:
                        tail = self.parser.close()
                        if tail is None:
                            raise BackendBadResponse(
                                f"backend '{backend.name}' ended the stream before any event"
                            )
                        events = [tail]
                    else:
                        events = self.parser.feed(chunk)
        except TimeoutError:
            raise BackendTimeout(
                f"backend '{backend.name}' sent no stream event within {self.forwarder.ttfb:g}s"
            ) from None
        except (UpstreamError, OSError) as exc:
            raise BackendUnreachable(
                f"backend '{backend.name}' failed before the first event: {describe(exc)}"
            ) from None
        now = time.perf_counter()
        self.first_event_ms = self.upstream.elapsed_ms()  # this backend's time to first event
        self.record.upstream_seconds += now - self.upstream.sent_at
        self.record.ttft_seconds = now - self.record.started
        return events

    async def _pump(self, response: web.StreamResponse, events: list[bytes]) -> NexusError | None:
        """Relay until [DONE] or end of stream; the error that ended it early, if any."""
        loop = asyncio.get_running_loop()
        idle = self.forwarder.idle
        resp = self.upstream.resp
        backend = self.upstream.backend
        reading = False
        try:
            async with asyncio.timeout(None) as deadline:
                while True:
                    out = self._convert(events)
                    if out:
                        reading = False
                        deadline.reschedule(loop.time() + idle)
                        await response.write(out)
                    if self.done:
                        return None
                    reading = True
                    deadline.reschedule(loop.time() + idle)
                    started = time.perf_counter()
                    chunk = await resp.read_chunk(None)
                    self.record.upstream_seconds += time.perf_counter() - started
                    if not chunk:
                        tail = self.parser.close()
                        self.done = True
                        events = [tail] if tail else []
                        continue
                    events = self.parser.feed(chunk)
        except TimeoutError:
            if not reading:
                self._client_gone("client stopped reading")
                return None
            return BackendTimeout(f"backend '{backend.name}' stalled for {idle:g}s mid-stream")
        except (UpstreamError, aiohttp.ClientError, OSError) as exc:
            # Writes go to the client (aiohttp errors), reads come from the backend.
            if not reading:
                self._client_gone("client disconnected")
                return None
            reason = describe(exc)
            return BackendUnreachable(f"backend '{backend.name}' failed mid-stream: {reason}")

    def _convert(self, events: list[bytes]) -> bytes:
        out = []
        for block in events:
            if self.done:
                break
            data = event_data(block)
            if data is None:
                out.append(block + b"\n\n")
                continue
            if data == DONE:
                self.done = True
                out.append(b"data: [DONE]\n\n")
                continue
            if b'"usage"' in data and b'"usage":null' not in data:
                block = self._usage(data, block)
                if not block:
                    continue
            elif self.rewrite_model:
                block = self._rename(data)
            out.append(block + b"\n\n")
        return b"".join(out)

    def _usage(self, data: bytes, block: bytes) -> bytes:
        chunk = _loads(data)
        if chunk is None:
            return block
        self.record.usage(chunk.get("usage"))
        if self.strip_usage and chunk.get("choices") == []:
            return b""
        return self._rename(data, chunk) if self.rewrite_model else block

    def _rename(self, data: bytes, chunk: dict[str, Any] | None = None) -> bytes:
        chunk = chunk if chunk is not None else _loads(data)
        if chunk is None or "model" not in chunk:
            return b"data: " + data
        chunk["model"] = self.plan.requested
        return b"data: " + orjson.dumps(chunk)

    def _client_gone(self, why: str) -> None:
        self.record.status = 499
        self.record.error_type = "client_disconnected"
        self.record.error = why

    def _fail(self, error: NexusError) -> None:
        self.record.error_type = error.code or "backend_error"
        self.record.error = error.message
        self.record.status = error.status
        self.forwarder.failed(self.upstream.backend, error, self.record)

    @staticmethod
    async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
        try:
            async with asyncio.timeout(1):
                await response.write(data)
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass


def _loads(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
