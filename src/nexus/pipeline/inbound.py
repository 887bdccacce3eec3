"""Inbound dialects: Nexus serving APIs other than OpenAI's to the clients that speak them.

An :class:`Inbound` turns the client's request into an OpenAI chat (or embeddings)
request, which the pipeline routes like any other; the OpenAI answer, stream or error is
turned back into the client's shape. When the chosen backend speaks the client's own API
(an Anthropic client and an ``anthropic`` backend, an Ollama client and an ``ollama``
backend), nothing is translated: the client's body goes as it came (``native``).

Some requests only such a backend can serve as sent (Ollama's ``suffix``, ``raw`` prompts,
loading a model): the translation raises :class:`NativeOnly`, and only native backends are
candidates. The pure mappings are ``nexus.dialects``; this module wires them to requests.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from nexus.dialects import anthropic, ollama
from nexus.errors import InvalidRequest, NexusError
from nexus.pipeline.record import Reply
from nexus.routing.requirements import Requirements, inspect_model
from nexus.transport.sse import DONE, event_data

if TYPE_CHECKING:
    from nexus.pipeline.exchange import Exchange
    from nexus.pipeline.relay import Translation

NDJSON = b"application/x-ndjson"
SSE = b"text/event-stream"


class NativeOnly(InvalidRequest):
    """Only a backend speaking the client's API can serve this request as sent. ``answer``
    (a body) is what to say when none serves the model (Ollama's load requests)."""

    def __init__(self, message: str, *, param: str | None = None, answer: bytes | None = None):
        super().__init__(message, param=param)
        self.answer = answer


class ClientStream(Protocol):
    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def finish(self) -> bytes: ...


class Inbound(Protocol):
    native: str  # the backend type that speaks this API itself
    native_path: str  # where such a backend serves it
    stream_type: bytes  # what the client's stream is

    def translate(self, body: Any) -> dict[str, Any]:
        """The OpenAI request for the client's; raises InvalidRequest (or NativeOnly)."""
        ...

    def requirements(self, body: Any) -> Requirements:
        """For a NativeOnly request: what routing needs, read from the client's body."""
        ...

    def answer(self, openai: dict[str, Any], model: str, started: float) -> bytes: ...

    def stream(self, model: str, request_id: str, started: float) -> ClientStream: ...

    def error(self, error: NexusError) -> bytes: ...

    def status(self, error: NexusError) -> int:
        """The HTTP status the client's API would answer ``error`` with."""
        ...

    def stream_error(self, error: NexusError) -> bytes: ...


ANTHROPIC_STATUSES = {502: 500, 503: 529, 504: 500}


class AnthropicMessages:
    """``POST /v1/messages`` for the anthropic SDK and Claude Code."""

    native = "anthropic"
    native_path = "/v1/messages"
    stream_type = SSE

    def translate(self, body: Any) -> dict[str, Any]:
        return anthropic.from_messages_request(body)

    def requirements(self, body: Any) -> Requirements:  # pragma: no cover - never NativeOnly
        return inspect_model(body, stream=False)

    def answer(self, openai: dict[str, Any], model: str, started: float) -> bytes:
        return orjson.dumps(anthropic.to_messages_response(openai, model=model))

    def stream(self, model: str, request_id: str, started: float) -> ClientStream:
        message_id = "msg_" + request_id.replace("-", "")[:24]
        return anthropic.ChatToMessagesStream(model=model, message_id=message_id)

    def error(self, error: NexusError) -> bytes:
        return anthropic.error_body(self.status(error), error.message)

    def status(self, error: NexusError) -> int:
        # Anthropic's API answers 500 or 529, never 502, 503 or 504: its clients (Claude
        # Code's "overloaded" retry among them) know those.
        return ANTHROPIC_STATUSES.get(error.status, error.status)

    def stream_error(self, error: NexusError) -> bytes:
        kind = "overloaded_error" if error.status in (429, 503, 529) else "api_error"
        event = {"type": "error", "error": {"type": kind, "message": error.message}}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


Kind = Literal["chat", "generate"]


class OllamaGeneration:
    """``POST /api/chat`` and ``/api/generate`` for Ollama's clients (Open WebUI, Enchanted,
    the ollama library). Ollama streams unless told not to."""

    native = "ollama"
    stream_type = NDJSON

    def __init__(self, kind: Kind) -> None:
        self.kind: Kind = kind
        self.native_path = f"/api/{kind}"

    def translate(self, body: Any) -> dict[str, Any]:
        if ollama.is_load_request(body):
            answer = ollama.load_answer(body, kind=self.kind, created_at=_now())
            raise NativeOnly("an empty request only loads the model", answer=orjson.dumps(answer))
        try:
            if self.kind == "chat":
                return ollama.chat_from_ollama(body)
            return ollama.generate_from_ollama(body)
        except InvalidRequest as exc:
            if exc.param in ("suffix", "raw", "template", "context"):
                raise NativeOnly(exc.message, param=exc.param) from None
            raise

    def requirements(self, body: Any) -> Requirements:
        stream = body.get("stream", True) if isinstance(body, dict) else True
        return inspect_model(body, stream=stream is not False)

    def answer(self, openai: dict[str, Any], model: str, started: float) -> bytes:
        convert = ollama.chat_to_ollama if self.kind == "chat" else ollama.generate_to_ollama
        return orjson.dumps(convert(openai, model=model, created_at=_now(), total_ns=_ns(started)))

    def stream(self, model: str, request_id: str, started: float) -> ClientStream:
        return OllamaStream(ollama.ChatToOllamaStream(model=model, kind=self.kind), started)

    def error(self, error: NexusError) -> bytes:
        return ollama.error_body(error.message)

    def status(self, error: NexusError) -> int:
        return error.status  # Ollama's clients take any status with its {"error"} body

    def stream_error(self, error: NexusError) -> bytes:
        return ollama.error_body(error.message) + b"\n"


class OllamaStream:
    """Ollama's stream writer, fed the timestamps it puts in every line."""

    def __init__(self, inner: ollama.ChatToOllamaStream, started: float) -> None:
        self.inner = inner
        self.started = started

    def feed(self, chunk: dict[str, Any]) -> bytes:
        return self.inner.feed(chunk, created_at=_now())

    def finish(self) -> bytes:
        return self.inner.finish(created_at=_now(), total_ns=_ns(self.started))


class OllamaEmbedding:
    """``POST /api/embed`` and the older ``/api/embeddings``."""

    native = "ollama"
    stream_type = NDJSON

    def __init__(self, kind: Literal["embed", "embeddings"]) -> None:
        self.kind: Literal["embed", "embeddings"] = kind
        self.native_path = f"/api/{kind}"

    def translate(self, body: Any) -> dict[str, Any]:
        if ollama.is_load_request(body):
            answer = ollama.load_answer(body, kind=self.kind, created_at=_now())
            raise NativeOnly("an empty request only loads the model", answer=orjson.dumps(answer))
        if self.kind == "embed":
            return ollama.embed_from_ollama(body)
        return ollama.embeddings_from_ollama(body)

    def requirements(self, body: Any) -> Requirements:
        return inspect_model(body, stream=False)

    def answer(self, openai: dict[str, Any], model: str, started: float) -> bytes:
        if self.kind == "embed":
            return orjson.dumps(ollama.embed_to_ollama(openai, model=model, total_ns=_ns(started)))
        return orjson.dumps(ollama.embeddings_to_ollama(openai))

    def stream(self, model: str, request_id: str, started: float) -> ClientStream:
        raise AssertionError("embeddings are never streamed")  # pragma: no cover

    def error(self, error: NexusError) -> bytes:
        return ollama.error_body(error.message)

    def status(self, error: NexusError) -> int:
        return error.status  # Ollama's clients take any status with its {"error"} body

    def stream_error(self, error: NexusError) -> bytes:  # pragma: no cover - never streamed
        return ollama.error_body(error.message) + b"\n"


def _now() -> str:
    """RFC 3339 with nanoseconds, as Ollama prints ``created_at``."""
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def _ns(started: float) -> int:
    return int((time.perf_counter() - started) * 1e9)


class ClientTranslation:
    """A backend's stream, already made OpenAI SSE by the outbound side, made the client's
    (Anthropic events, Ollama lines): each OpenAI chunk goes to the dialect's writer, whose
    closing bytes follow the OpenAI stream's end."""

    __slots__ = ("client", "closed", "inner")

    def __init__(self, inner: Translation, client: ClientStream) -> None:
        self.inner = inner
        self.client = client
        self.closed = False

    @property
    def framing(self) -> str:
        return self.inner.framing

    @property
    def done(self) -> bool:
        return self.inner.done

    def convert(self, blocks: list[bytes]) -> bytes:
        return self._client(self.inner.convert(blocks))

    def end(self) -> tuple[bytes, NexusError | None]:
        rest, error = self.inner.end()
        out = self._client(rest)
        if error is None and not self.closed:
            self.closed = True
            out += self.client.finish()
        return out, error

    def _client(self, data: bytes) -> bytes:
        out = []
        for frame in data.split(b"\n\n"):
            payload = event_data(frame) if frame else None
            if payload is None or payload == DONE:
                continue
            out.append(self.client.feed(orjson.loads(payload)))
        if self.inner.done and not self.closed:
            self.closed = True
            out.append(self.client.finish())
        return b"".join(out)


def client_reply(ex: Exchange, inbound: Inbound, reply: Reply) -> Reply:
    """An OpenAI answer (or OpenAI-shaped error) made the client's."""
    try:
        parsed = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        parsed = {}
    if reply.status >= 400:
        error = parsed.get("error") if isinstance(parsed, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        failure = NexusError(str(message or f"HTTP {reply.status}"))
        failure.status = reply.status
        return Reply(reply.status, inbound.error(failure), reply.headers, native=True)
    record = ex.record
    body = inbound.answer(parsed, ex.requirements.model, record.started)
    return Reply(reply.status, body, reply.headers, native=True)
