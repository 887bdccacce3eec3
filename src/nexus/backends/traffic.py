"""What each backend family's OpenAI-compatible traffic endpoints accept, beyond the API.

Probing lives in the adapters; these are the quirks the proxy must respect when it sends
requests, kept here with the rest of the per-family knowledge.
"""

from __future__ import annotations

import uuid
from typing import Any

# Streams that honour stream_options.include_usage: Nexus asks for usage on the client's
# behalf (so streams can be counted) and drops the extra chunk when the client did not ask.
STREAM_USAGE = frozenset({"ollama", "vllm", "lmstudio", "openai", "llamacpp"})
# llama-cpp-python's middleware (starlette-context RequestIdPlugin) answers an empty 400 to
# any X-Request-Id that is not a UUID: such backends get the id only when it is one.
UUID_REQUEST_IDS = frozenset({"llamacpp"})


# llama-cpp-python's request model refuses an assistant turn whose content is null (the
# OpenAI shape of a tool-call turn) and one without content; an empty string passes.
NULL_CONTENT_REFUSED = frozenset({"llamacpp"})


def without_null_content(kind: str, messages: Any) -> list[Any] | None:
    """The messages with null assistant content made "", for a backend that refuses null;
    None when nothing needs to change (the common case: no tool-call turns)."""
    if kind not in NULL_CONTENT_REFUSED or not isinstance(messages, list):
        return None
    if not any(isinstance(m, dict) and "content" in m and m["content"] is None for m in messages):
        return None
    return [
        {**m, "content": ""} if isinstance(m, dict) and m.get("content", "") is None else m
        for m in messages
    ]


def asks_stream_usage(kind: str) -> bool:
    return kind in STREAM_USAGE


def accepts_request_id(kind: str, request_id: str) -> bool:
    if kind not in UUID_REQUEST_IDS:
        return True
    try:
        uuid.UUID(request_id)
    except ValueError:
        return False
    return True
