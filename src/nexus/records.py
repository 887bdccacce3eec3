"""One record per request, filled in as it goes and handed to every sink when it ends.

The request log line (F11), metrics (F09) and the dashboard history (F10) all read the same
record, so they can never disagree about what happened. A record holds no message content.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nexus.asgi import Scope
from nexus.asgi.io import header

Sink = Callable[["RequestRecord"], None]
REQUEST_LOGGER = "nexus.request"  # the logger of the request lines


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    endpoint: str  # the proxied endpoint's name: "chat", "embeddings", "messages", ...
    model: str = ""  # as the client asked
    routed_model: str = ""  # as the backend was asked (after alias / fallback)
    backend: str = ""
    backend_type: str = ""
    status: int = 0
    stream: bool = False
    route_reason: str = ""
    retry_count: int = 0
    fallback_chain: list[str] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)  # backends tried, in order
    failures: list[str] = field(default_factory=list)  # "backend: why" for each failed one
    error_type: str = ""  # "" on success; else e.g. timeout, backend_error, no_backend
    error: str = ""
    tokens_prompt: int | None = None
    tokens_completion: int | None = None
    tokens_cached: int | None = None  # of the prompt, served from the provider's cache
    cost_usd: float | None = None  # cloud requests only
    cost_flag: str = ""  # "" (priced from the usage), "estimated", or "cost_unknown"
    completion_chars: int = 0  # text relayed from a cloud stream (its cost if usage never came)
    queue_wait_seconds: float | None = None  # time spent in the queue, if it waited
    tenant: str = ""  # whose key it carried (auth on); never the key
    privacy_zone: str = ""  # the request's zone (F13), once planned
    privacy_action: str = ""  # "blocked" (a zone rule kept backends out) | "stripped"
    started: float = field(default_factory=time.perf_counter)
    timestamp: float = field(default_factory=time.time)
    upstream_seconds: float = 0.0  # time spent waiting on backends
    ttft_seconds: float | None = None  # first event of a stream
    duration_seconds: float = 0.0

    def usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int):
                self.tokens_prompt = prompt
            if isinstance(completion, int):
                self.tokens_completion = completion
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                self.tokens_cached = details["cached_tokens"]

    def to_dict(self) -> dict[str, Any]:
        """The fields of the request log line (F11) that describe the request."""
        line = self.log_line(self.timestamp)
        for name in LINE_HEAD:
            del line[name]
        return line

    def log_line(self, timestamp: object) -> dict[str, Any]:
        """The request log line (F11): its head (:data:`LINE_HEAD`), then the request's
        fields, in this order. One dict literal: built field by field (or head and fields
        merged) it cost half as much again, on every request."""
        ttft = self.ttft_seconds
        line = {
            "timestamp": timestamp,
            "level": "info",
            "logger": REQUEST_LOGGER,
            "message": "request",
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "model": self.model,
            "routed_model": self.routed_model,
            "backend": self.backend,
            "backend_type": self.backend_type,
            "status": self.status,
            "latency_ms": millis(self.duration_seconds),
            "ttft_ms": None if ttft is None else millis(ttft),
            "tokens_prompt": self.tokens_prompt,
            "tokens_completion": self.tokens_completion,
            "stream": self.stream,
            "route_reason": self.route_reason,
            "retry_count": self.retry_count,
            "fallback_chain": self.fallback_chain,
            "attempts": self.attempts,
            "error_type": self.error_type,
            "error": self.error,
        }
        if self.tenant:
            line["tenant"] = self.tenant
        if self.queue_wait_seconds is not None:
            line["queue_wait_ms"] = millis(self.queue_wait_seconds)
        if self.privacy_action == "stripped":
            line["context_stripped"] = True
        if self.cost_usd is not None:  # cloud requests: local lines stay as they were
            line["cost_usd"] = round(self.cost_usd, 8)
            if self.cost_flag:
                line["cost_flag"] = self.cost_flag
        return line


LINE_HEAD = ("timestamp", "level", "logger", "message")  # every log line starts with these


def millis(seconds: float) -> float:
    """``seconds`` in milliseconds, to the microsecond: ``round(seconds * 1000, 3)`` for a
    duration (never negative), at a third of the cost (``round`` with digits goes through a
    decimal string)."""
    return int(seconds * 1_000_000 + 0.5) / 1000


# Generated ids: a random per-process prefix and a counter, unique without a syscall each,
# shaped as a UUID because some backends (llama-cpp-python) reject any other request id.
_RANDOM = os.urandom(8).hex()
_ID_PREFIX = f"{_RANDOM[:8]}-{_RANDOM[8:12]}-{_RANDOM[12:]}"
_ID_COUNTER = itertools.count(1)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id(scope: Scope) -> str:
    """The client's ``X-Request-Id`` when well-formed (so its logs and ours join up)."""
    incoming = header(scope, b"x-request-id")
    if incoming and REQUEST_ID.fullmatch(incoming):
        return incoming
    n = f"{next(_ID_COUNTER):016x}"
    return f"{_ID_PREFIX}-{n[:4]}-{n[4:]}"


class Recorder:
    """Fans finished records out to the sinks, once the answer is on its way.

    ``finish`` only queues the record; the sinks run for every queued record when the event
    loop next gets a turn, by which time the response has been written. The client does
    not wait on the log line and the counters, and under load one turn serves a batch. A
    failing sink never fails a request.
    """

    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self._queued: list[RequestRecord] = []

    def finish(self, record: RequestRecord) -> None:
        record.duration_seconds = time.perf_counter() - record.started
        if not self._queued:
            asyncio.get_running_loop().call_soon(self.flush)
        self._queued.append(record)

    def flush(self) -> None:
        queued, self._queued = self._queued, []
        sinks = self.sinks
        for record in queued:
            for sink in sinks:
                try:
                    sink(record)
                except Exception:  # pragma: no cover - a sink bug must not break traffic
                    logging.getLogger("nexus").exception("request record sink failed")
