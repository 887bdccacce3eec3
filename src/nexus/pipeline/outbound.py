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
from nexus.pipeline.inbound import Inbound
from nexus.pipeline.relay import OpenAIStream, Translation, delta_chars, parse_event
from nexus.routing.router import Route
from nexus.transport.sse import event_data

DONE_FRAME = b"data: [DONE]\n\n"


class Outbound(Protocol):
    # A backend's 4xx JSON is relayed as it came (it is already in the client's API), else
    # put in OpenAI's shape.
    relays_errors: bool

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

    def usage(self, answer: dict[str, Any]) -> Any:
        """The usage of an answer (as ``answer`` returned it), in OpenAI's shape."""
        ...


class OpenAIOutbound:
    relays_errors = True

    def request(self, ex: Exchange, route: Route) -> tuple[str, bytes]:
        req = ex.requirements
        changes: dict[str, Any] = {}
        if route.model != req.model:
            changes["model"] = route.model
        kind = route.backend.type
        if req.stream and not req.include_usage and traffic.asks_stream_usage(kind):
            options = ex.body.get("stream_options") or {}
            changes["stream_options"] = {**options, "include_usage": True}
        if (messages := traffic.without_null_content(kind, ex.body.get("messages"))) is not None:
            changes["messages"] = messages
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
            count=route.backend.cloud,
        )

    def usage(self, answer: dict[str, Any]) -> Any:
        return answer.get("usage")

    def error_text(self, raw: bytes) -> str:
        try:
            error = orjson.loads(raw).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            return ""
        message = error.get("message") if isinstance(error, dict) else error
        return str(message) if message else ""


class AnthropicOutbound:
    relays_errors = False

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

    def usage(self, answer: dict[str, Any]) -> Any:
        return answer.get("usage")

    def error_text(self, raw: bytes) -> str:
        return anthropic.error_message(raw)


class GeminiOutbound:
    relays_errors = False

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

    def usage(self, answer: dict[str, Any]) -> Any:
        return answer.get("usage")

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
    framing = "sse"

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
            for chunk in chunks:
                self.record.completion_chars += delta_chars(chunk)
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
            self.record.usage(self.translator.usage)  # what came (the prompt's, usually)
            return b"", BackendBadResponse(f"backend '{self.backend}' ended the stream early")
        return b"".join(_frames(self.translator.finish())) + self._close(), None


def _frames(chunks: list[dict[str, Any]]) -> list[bytes]:
    return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]


class NativeOutbound:
    """The client speaks the backend's own API (an Anthropic client and an anthropic backend,
    an Ollama client and an ollama backend): its body goes as it came, with the model renamed
    when an alias or fallback chose another, and the answer comes back as it is."""

    relays_errors = True

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound

    def request(self, ex: Exchange, route: Route) -> tuple[str, bytes]:
        body = ex.client_body or {}
        if body.get("model") == route.model:
            return self.inbound.native_path, ex.client_raw
        return self.inbound.native_path, orjson.dumps({**body, "model": route.model})

    def answer(self, ex: Exchange, route: Route, parsed: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def stream(self, ex: Exchange, route: Route) -> Translation:
        requested = ex.requirements.model
        rename = requested if route.model != requested else None
        return NativeStream(ex, route, self.inbound.native, rename)

    def usage(self, answer: dict[str, Any]) -> Any:
        if self.inbound.native == "anthropic":
            return anthropic_usage(answer)
        return ollama_usage(answer)

    def error_text(self, raw: bytes) -> str:
        if self.inbound.native == "anthropic":
            return anthropic.error_message(raw)
        return OPENAI.error_text(raw)  # Ollama: {"error": "..."}


class NativeStream:
    """A native stream relayed as it came: Anthropic SSE events (ending at message_stop) or
    Ollama NDJSON lines (ending at the line with ``"done": true``). Each event is parsed for
    its usage, and renamed when the client asked for another model name."""

    __slots__ = ("backend", "done", "framing", "kind", "record", "rename")

    def __init__(self, ex: Exchange, route: Route, kind: str, rename: str | None) -> None:
        self.record = ex.record
        self.backend = route.backend.name
        self.kind = kind
        self.rename = rename
        self.framing = "ndjson" if kind == "ollama" else "sse"
        self.done = False

    def convert(self, blocks: list[bytes]) -> bytes:
        out: list[bytes] = []
        for block in blocks:
            if self.done:
                break
            if self.kind == "ollama":
                out.append(self._line(block))
            else:
                out.append(self._event(block))
        return b"".join(out)

    def _line(self, line: bytes) -> bytes:
        event = parse_event(line, self.backend)
        if event.get("done") is True:
            self.done = True
            self.record.usage(ollama_usage(event))
        return self._renamed(event, line) + b"\n"

    def _event(self, block: bytes) -> bytes:
        data = event_data(block)
        if data is None:
            return block + b"\n\n"
        event = parse_event(data, self.backend)
        kind = event.get("type")
        if kind == "message_stop":
            self.done = True
        elif kind in ("message_start", "message_delta"):
            self.record.usage(anthropic_usage(event))
        if self.rename is not None and kind == "message_start":
            message = {**event.get("message", {}), "model": self.rename}
            data = orjson.dumps({**event, "message": message})
            return b"event: message_start\ndata: " + data + b"\n\n"
        return block + b"\n\n"

    def _renamed(self, event: dict[str, Any], raw: bytes) -> bytes:
        if self.rename is None or "model" not in event:
            return raw
        return orjson.dumps({**event, "model": self.rename})

    def end(self) -> tuple[bytes, NexusError | None]:
        if self.done:
            return b"", None
        return b"", BackendBadResponse(f"backend '{self.backend}' ended the stream early")


def ollama_usage(event: dict[str, Any]) -> dict[str, Any]:
    """An Ollama final line's counts, as OpenAI usage."""
    return {
        "prompt_tokens": event.get("prompt_eval_count"),
        "completion_tokens": event.get("eval_count"),
    }


def anthropic_usage(event: dict[str, Any]) -> dict[str, Any] | None:
    """An Anthropic message_start's input count, or a message_delta's output count."""
    usage = event.get("usage") or (event.get("message") or {}).get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("input_tokens")
    if isinstance(prompt, int):
        prompt += sum(
            usage.get(k) or 0 for k in ("cache_read_input_tokens", "cache_creation_input_tokens")
        )
    cached = usage.get("cache_read_input_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.get("output_tokens"),
        "prompt_tokens_details": {"cached_tokens": cached} if isinstance(cached, int) else None,
    }


OPENAI = OpenAIOutbound()
OUTBOUND: dict[str, Outbound] = {"anthropic": AnthropicOutbound(), "google": GeminiOutbound()}


def outbound_for(backend_type: str) -> Outbound:
    return OUTBOUND.get(backend_type, OPENAI)
