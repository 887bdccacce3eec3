"""Dialects: the foreign APIs Nexus speaks, as pure translations to and from OpenAI chat.

The canonical form inside Nexus is an OpenAI chat-completions request, answer and stream
chunk (plain ``dict`` values, as ``orjson`` parses them). OpenAI to OpenAI is not a dialect
at all: those bytes pass through untouched and pay nothing.

One module per foreign API. Every function here is pure: no I/O, no clock reads unless a
value is passed in, no globals that change. The pipeline owns the sockets; a dialect only
maps shapes. The same module serves both directions where both exist:

* **outbound** (a backend speaks the dialect: Anthropic and Google clouds): OpenAI request
  -> dialect request; dialect answer -> OpenAI answer; dialect stream events -> OpenAI
  chunks (a stateful translator fed one parsed event at a time).
* **inbound** (a client speaks the dialect: the ``anthropic`` SDK, the ``ollama`` client):
  dialect request -> OpenAI request; OpenAI answer -> dialect answer; OpenAI chunks ->
  dialect stream bytes, framed as that API frames them (SSE with ``event:`` lines, NDJSON).

Errors: a request a dialect cannot translate raises :class:`nexus.errors.InvalidRequest`
naming the field (``param``) in the client's own terms; a stream that reports an error of
its own raises :class:`StreamFailed`. Unknown stream event types are skipped, never passed
on raw.
"""

from __future__ import annotations


class StreamFailed(Exception):
    """A backend reported an error inside a stream (e.g. Anthropic ``event: error``).

    ``str(exc)`` is the backend's own message, short; ``kind`` its error type when it gave
    one (``overloaded_error``...)."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind
