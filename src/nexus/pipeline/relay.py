"""Relay of a streamed (SSE) answer, event by event.

The client's response is only started once the first upstream event is in hand, so a
backend that accepts a stream and then fails or stalls before producing anything can still
be failed over (``first_events`` raises a BackendError). From then on the backend is fixed:
``pump`` relays until the end and returns the error that ended the stream early, if any,
for the record stage to write as one in-band error event.

How events are turned into what the client receives is the ``Translation``'s business;
:class:`OpenAIStream` is the identity, OpenAI backend to OpenAI client, byte for byte.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import orjson

from nexus.asgi import Send
from nexus.errors import (
    BackendBadResponse,
    ClientGone,
    NexusError,
)
from nexus.pipeline.upstream import upstream_failure
from nexus.records import RequestRecord
from nexus.transport import Answer
from nexus.transport.sse import DONE, NDJSONParser, SSEParser, event_data


class Translation(Protocol):
    """Turns upstream event blocks into bytes for the client, noting usage on the way."""

    @property
    def framing(self) -> str:
        """How the upstream frames its events: "sse" or "ndjson"."""
        ...

    @property
    def done(self) -> bool:
        """The upstream said it is finished ([DONE], message_stop...)."""
        ...

    def convert(self, blocks: list[bytes]) -> bytes:
        """Raises BackendError when an event is unusable (the stream then ends)."""
        ...

    def end(self) -> tuple[bytes, NexusError | None]:
        """At the end of the upstream body: what is left to send, and what was missing (the
        stream then ends with an error event), if anything."""
        ...


class OpenAIStream:
    """OpenAI SSE to an OpenAI client: each event relayed as it came (re-framed exactly
    once), the model renamed when an alias or fallback served, usage noted for the record,
    and the usage-only chunk dropped when Nexus asked for it on the client's behalf."""

    __slots__ = ("backend", "count", "done", "record", "rename", "strip_usage")
    framing = "sse"

    def __init__(
        self,
        record: RequestRecord,
        backend: str,
        rename: str | None,
        strip: bool,
        count: bool = False,
    ) -> None:
        self.record = record
        self.backend = backend
        self.rename = rename  # the model name the client asked for, when it differs
        self.strip_usage = strip
        self.count = count  # note the text relayed (a cloud stream: its cost if cut)
        self.done = False

    def convert(self, blocks: list[bytes]) -> bytes:
        out = []
        for block in blocks:
            if self.done:
                break  # nothing after [DONE] is relayed
            data = event_data(block)
            if data is None:
                out.append(block + b"\n\n")  # a comment (keep-alive): harmless, relayed
                continue
            if data == DONE:
                self.done = True
                out.append(b"data: [DONE]\n\n")
                continue
            chunk = parse_event(data, self.backend)
            if self.count:
                self.record.completion_chars += delta_chars(chunk)
            if b'"usage"' in data and isinstance(chunk.get("usage"), dict):
                self.record.usage(chunk["usage"])
                if self.strip_usage and chunk.get("choices") == []:
                    continue
            if self.rename is not None and "model" in chunk:
                chunk["model"] = self.rename
                block = b"data: " + orjson.dumps(chunk)
            out.append(block + b"\n\n")
        return b"".join(out)

    def end(self) -> tuple[bytes, NexusError | None]:
        if self.done:
            return b"", None
        return b"", BackendBadResponse(f"backend '{self.backend}' ended the stream without [DONE]")


def delta_chars(chunk: dict[str, Any]) -> int:
    """Characters of text an OpenAI chunk carries (its content and reasoning deltas)."""
    choices = chunk.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return 0
    delta = choices[0].get("delta")
    if not isinstance(delta, dict):
        return 0
    chars = 0
    for key in ("content", "reasoning_content"):
        text = delta.get(key)
        if isinstance(text, str):
            chars += len(text)
    return chars


def parse_event(data: bytes, backend: str) -> dict[str, Any]:
    """An event's data as the JSON object it must be; a BackendError otherwise."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        event = None
    if not isinstance(event, dict):
        raise BackendBadResponse(f"backend '{backend}' sent a stream event that is not JSON")
    return event


class Relay:
    __slots__ = ("answer", "backend", "idle", "parser", "record", "sent_at", "translation")
    parser: SSEParser | NDJSONParser

    def __init__(
        self,
        answer: Answer,
        backend: str,
        record: RequestRecord,
        translation: Translation,
        idle: float,
        max_event: int,
        sent_at: float,
    ) -> None:
        self.answer = answer
        self.backend = backend
        self.record = record
        self.translation = translation
        self.idle = idle
        self.parser = (NDJSONParser if translation.framing == "ndjson" else SSEParser)(max_event)
        self.sent_at = sent_at

    async def first_events(self, deadline: float) -> list[bytes]:
        """Read until the first whole event; failures here can still fail over."""
        events: list[bytes] = []
        try:
            async with asyncio.timeout(max(deadline - time.perf_counter(), 0.001)):
                while not events:
                    chunk = await self.answer.read_chunk(None)
                    if not chunk:
                        tail = self.parser.close()
                        if tail is None:
                            raise BackendBadResponse(
                                f"backend '{self.backend}' ended the stream before any event"
                            )
                        events = [tail]
                    else:
                        events = self.parser.feed(chunk)
        except Exception as exc:
            seconds = deadline - self.sent_at
            error = upstream_failure(self.backend, exc, "before the first event", seconds)
            if error is None:
                raise
            raise error from None
        self.record.upstream_seconds += time.perf_counter() - self.sent_at
        return events

    async def pump(self, send: Send, events: list[bytes]) -> NexusError | None:
        """Relay until the upstream is done; the error that ended it early, if any.

        One deadline covers both sides: it is moved ``idle`` seconds ahead before every read
        from the backend and every write to the client, so a stalled backend and a client
        that stopped reading are both bounded, and a long healthy stream never is."""
        loop = asyncio.get_running_loop()
        translation = self.translation
        answer = self.answer
        reading = False
        try:
            async with asyncio.timeout(None) as deadline:
                while True:
                    out = translation.convert(events)
                    if out:
                        reading = False
                        deadline.reschedule(loop.time() + self.idle)
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    if translation.done:
                        return None
                    reading = True
                    deadline.reschedule(loop.time() + self.idle)
                    started = time.perf_counter()
                    chunk = await answer.read_chunk(None)
                    self.record.upstream_seconds += time.perf_counter() - started
                    if not chunk:
                        tail = self.parser.close()
                        out = translation.convert([tail] if tail else [])
                        rest, error = translation.end()
                        if out or rest:
                            reading = False
                            await send(
                                {
                                    "type": "http.response.body",
                                    "body": out + rest,
                                    "more_body": True,
                                }
                            )
                        return error
                    events = self.parser.feed(chunk)
        except Exception as exc:
            if not reading and isinstance(exc, TimeoutError | OSError):
                return ClientGone("client stopped reading")  # our write to it was blocked
            error = upstream_failure(self.backend, exc, "mid-stream", self.idle)
            if error is None:
                raise
            return error
