"""Conversation affinity (F13): a conversation's next turn goes where its last one went.

A backend that served the previous turn holds the conversation's prefix in its prompt
cache (llama.cpp, vLLM, Ollama keep it per slot); sending the next turn elsewhere makes
the whole prompt be processed again. A conversation is named by the client's
``X-Nexus-Session`` header, else its ``user`` field, else its system message(s) and first
user message, which do not change from turn to turn. Only a hash is kept, never content,
in a bounded LRU whose entries expire.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import orjson

MAX_SESSION_CHARS = 256


def conversation_key(
    model: str, body: dict[str, Any], session: str | None
) -> tuple[int | None, bool]:
    """The conversation's hash (None when the request names no conversation), and whether
    this request continues it. A first turn (no assistant message yet) has no previous
    backend to go back to: it is balanced as usual, and remembered."""
    if session:
        return hash((model, "session", session[:MAX_SESSION_CHARS])), True
    user = body.get("user")
    if isinstance(user, str) and user:
        return hash((model, "user", user[:MAX_SESSION_CHARS])), True
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None, False
    key = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return None, False
        if key is None and message.get("role") == "user":
            # (Python's bytes hash is keyed per process: nothing outside can predict it.)
            key = hash((model, orjson.dumps(messages[: index + 1])))
        elif key is not None and message.get("role") == "assistant":
            return key, True
    return key, False


class Affinity:
    """Conversation hash -> the backend id that served its last turn."""

    def __init__(self, ttl_seconds: float, max_entries: int) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._last: OrderedDict[int, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def get(self, key: int) -> str | None:
        entry = self._last.get(key)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._last[key]
            return None
        self._last.move_to_end(key)
        return entry[0]

    def remember(self, key: int, backend_id: str) -> None:
        last = self._last
        last[key] = (backend_id, time.monotonic() + self.ttl)
        last.move_to_end(key)
        while len(last) > self.max_entries:
            last.popitem(last=False)

    def forget_backend(self, backend_id: str) -> None:
        """A removed backend: its conversations will go elsewhere."""
        for key in [k for k, (bid, _) in self._last.items() if bid == backend_id]:
            del self._last[key]
