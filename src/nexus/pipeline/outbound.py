"""How a request is put to a backend, by the API it speaks, and its answer read back.

The canonical form is OpenAI chat. :class:`OpenAIOutbound` is the identity: the client's
bytes go as they came (changed only where a field must), the answer as the backend sent it.
:class:`AnthropicOutbound` and :class:`GeminiOutbound` translate both ways with the pure
functions of ``nexus.dialects``; their streams are turned into OpenAI chunks event by event.
Adding a provider is one class here and one dialect module.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from nexus.backends import traffic
from nexus.dialects import StreamFailed, anthropic, gemini
from nexus.errors import BackendBadResponse, NexusError
from nexus.pipeline.exchange import Exchange
from nexus.pipeline.relay import OpenAIStream, Translation, parse_event
from nexus.routing.router import Route
from nexus.transport.sse import event_data

DONE_FRAME = b"data: [DONE]\n\n"


class Outbound(Protocol):
    def request(self, ex: Exchange, route: Route) -> tuple[str, bytes]:
        """The path and body to send (may raise InvalidRequest: a field the API lacks)."""
        ...

    def answer(self, ex: Exchange, route: Route, parsed: dict[str, Any]) -> dict[str, Any] | None:
        """The OpenAI answer for a parsed 200 body; None: the body is already OpenAI's."""
        ...

    def stream(self, ex: Exchange, route: Route) -> Translation: ...

    def error_text(self, raw: bytes) -> str:
        """The provider's own message in an error body, or "" ."""
        ...


class OpenAIOutbound:
    def request(self, ex: Exchange, route: Route) -> tuple[str, bytes]:
        req = ex.requirements
        changes: dict[str, Any] = {}
        if route.model != req.model:
            changes["model"] = route.model
        if req.stream and not req.include_usage and traffic.asks_stream_usage(route.backend.type):
            options = ex.body.get("stream_options") or {}
            changes["stream_options"] = {**options, "include_usage": True}
        if not changes:
            return ex.endpoint.path, ex.raw  # byte-faithful: the client's own bytes
        return ex.endpoint.path, orjson.dumps({**ex.body, **changes})

    def answer(self, ex: Exchange, route: Route, parsed: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def stream(self, ex: Exchange, route: Route) -> Translation:
        requested = ex.requirements.model
        return OpenAIStream(
            ex.record,
            route.backend.name,
            requested if route.model != requested else None,
            strip=not ex.requirements.include_usage,
        )

    def error_text(self, raw: bytes) -> str:
        try:
            error = orjson.loads(raw).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            return ""
        message = error.get("message") if isinstance(error, dict) else error
        return str(message) if message else ""


class AnthropicOutbound:
    def request(self, ex: Exchange, route: Route) -> tuple[str, bytes]:
        body = anthropic.to_messages_request(
            ex.body, model=route.model, default_max_tokens=route.backend.max_output_tokens
        )
        return "/v1/messages", orjson.dumps(body)

    def answer(self, ex: Exchange, route: Route, parsed: dict[str, Any]) -> dict[str, Any] | None:
        return anthropic.from_messages_response(
            parsed, model=ex.requirements.model, created=int(time.time())
        )

    def stream(self, ex: Exchange, route: Route) -> Translation:
        translator = anthropic.MessagesToChatStream(
            model=ex.requirements.model,
            created=int(time.time()),
            include_usage=ex.requirements.include_usage,
        )
        return ForeignStream(ex, route, translator, closes=True)

    def error_text(self, raw: bytes) -> str:
        return anthropic.error_message(raw)


class GeminiOutbound:
    def request(self, ex: Exchange, route: Route) -> tuple[str, bytes]:
        path = gemini.path(route.model, stream=ex.requirements.stream)
        return path, orjson.dumps(gemini.to_generate_request(ex.body))

    def answer(self, ex: Exchange, route: Route, parsed: dict[str, Any]) -> dict[str, Any] | None:
        return gemini.from_generate_response(
            parsed,
            model=ex.requirements.model,
            created=int(time.time()),
            id=f"chatcmpl-{ex.record.request_id}",
        )

    def stream(self, ex: Exchange, route: Route) -> Translation:
        translator = gemini.GenerateToChatStream(
            model=ex.requirements.model,
            created=int(time.time()),
            id=f"chatcmpl-{ex.record.request_id}",
            include_usage=ex.requirements.include_usage,
        )
        return ForeignStream(ex, route, translator, closes=False)

    def error_text(self, raw: bytes) -> str:
        return gemini.error_message(raw)


class Translator(Protocol):
    """A dialect's stream translator (``nexus.dialects``): provider events -> OpenAI chunks."""

    @property
    def usage(self) -> dict[str, Any] | None: ...

    @property
    def finished(self) -> bool: ...

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]: ...

    def finish(self) -> list[dict[str, Any]]: ...


class ForeignStream:
    """A provider's SSE events, as OpenAI chunks: each event's data parsed and handed to the
    dialect's translator, its chunks framed as OpenAI's. ``[DONE]`` follows the provider's
    own end: an end event (Anthropic ``message_stop``, ``closes_on_finish``), or the end of
    the body after every finish reason (Gemini). A body that ends before is an error."""

    __slots__ = ("backend", "closes_on_finish", "done", "record", "translator")

    def __init__(self, ex: Exchange, route: Route, translator: Translator, closes: bool) -> None:
        self.record = ex.record
        self.backend = route.backend.name
        self.translator = translator
        self.closes_on_finish = closes
        self.done = False

    def convert(self, blocks: list[bytes]) -> bytes:
        out: list[bytes] = []
        for block in blocks:
            data = event_data(block)
            if data is None or self.done:
                continue  # comments, pings, anything after the end
            try:
                chunks = self.translator.feed(parse_event(data, self.backend))
            except StreamFailed as exc:
                raise BackendBadResponse(
                    f"backend '{self.backend}' reported an error mid-stream: {exc}",
                    logged=f"backend '{self.backend}' reported an error mid-stream",
                ) from None
            out += _frames(chunks)
            if self.closes_on_finish and self.translator.finished:
                out.append(self._close())
        return b"".join(out)

    def _close(self) -> bytes:
        self.done = True
        self.record.usage(self.translator.usage)
        return DONE_FRAME

    def end(self) -> tuple[bytes, NexusError | None]:
        if self.done:
            return b"", None
        if not self.translator.finished:
            return b"", BackendBadResponse(f"backend '{self.backend}' ended the stream early")
        return b"".join(_frames(self.translator.finish())) + self._close(), None


def _frames(chunks: list[dict[str, Any]]) -> list[bytes]:
    return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]


OPENAI = OpenAIOutbound()
OUTBOUND: dict[str, Outbound] = {"anthropic": AnthropicOutbound(), "google": GeminiOutbound()}


def outbound_for(backend_type: str) -> Outbound:
    return OUTBOUND.get(backend_type, OPENAI)
