"""Plain data types shared by the fake inference servers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


@dataclass
class FakeModel:
    """A model served by a fake backend."""

    id: str
    context_length: int = 8192
    vision: bool = False
    tools: bool = True
    embedding: bool = False  # True = embedding-only model (no chat)

    @property
    def digest(self) -> str:
        """Stable sha256 hex digest (Ollama-style) of everything the model is, not only its id:
        Ollama's digest names the model's content, so two servers that list one name with
        different capabilities or context have different digests (Nexus shares what
        /api/show said between backends that list the same name and digest)."""
        what = f"{self.id}|{self.context_length}|{self.vision}|{self.tools}|{self.embedding}"
        return hashlib.sha256(what.encode()).hexdigest()


class Behavior(StrEnum):
    """How a fake backend answers (see FakeBackend for per-endpoint meaning)."""

    OK = "ok"
    HANG = "hang"  # accept the request, never answer (until peer leaves / stop())
    HEADERS_THEN_STALL = "headers_then_stall"  # 200 + headers, then nothing
    ERROR_500 = "error_500"
    ERROR_502 = "error_502"
    ERROR_503 = "error_503"
    ERROR_400 = "error_400"
    ERROR_401 = "error_401"
    ERROR_403 = "error_403"
    ERROR_429 = "error_429"  # with Retry-After: 7
    INVALID_JSON = "invalid_json"  # 200, application/json, body b"{not json"
    TRUNCATED = "truncated"  # Content-Length N, connection closed after N/2 bytes
    CUT_STREAM = "cut_stream"  # `cut_after` SSE events, then abort (no [DONE])
    STALL_STREAM = "stall_stream"  # `cut_after` SSE events, then stall forever
    SLOW = "slow"  # correct answer after `delay` s (streams: also between events)

    @property
    def error_status(self) -> int | None:
        """HTTP status for the ERROR_* members, None for the others."""
        if self.name.startswith("ERROR_"):
            return int(self.name.removeprefix("ERROR_"))
        return None


class HeaderDict(dict[str, str]):
    """A plain dict of headers with lower-cased keys and case-insensitive lookups."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        for key, value in items:
            lower = key.lower()
            if dict.__contains__(self, lower):
                value = f"{dict.__getitem__(self, lower)}, {value}"
            super().__setitem__(lower, value)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key.lower(), value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass
class ReceivedRequest:
    """One HTTP request as received by a fake backend."""

    method: str
    path: str
    headers: dict[str, str]  # a HeaderDict: lookups are case-insensitive
    body: bytes
    json: Any  # parsed body, or None when empty / not JSON
    query: dict[str, str] = field(default_factory=dict)
