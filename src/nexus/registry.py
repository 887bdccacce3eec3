"""The backend registry (F02): the single source of truth for backends and their models.

Nexus runs on one asyncio event loop, so a mutation between two awaits is atomic: the
registry needs no locks (the Rust spec's DashMap). Readers on the request path get plain
lists from the model index; writers (health checker, discovery, admin API) replace a
backend's models and rebuild only that backend's index entries.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nexus.config import CLOUD_TYPES
from nexus.pricing import Price
from nexus.routing.limits import TokenBucket
from nexus.transport.pool import TLS

LATENCY_EWMA_ALPHA = 0.2
MAX_NAME = 64
MAX_URL = 2048
# A backend's name reaches response headers, log lines, metric labels and the dashboard:
# it is kept to characters that are harmless in all of them.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:@+/()-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9 ._:@+/()-]+")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a backend, or None when it can."""
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty string"
    if len(name) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters"
    if not NAME.fullmatch(name) or name != name.strip():
        return (
            "may hold only letters, digits, spaces and . _ : @ + / ( ) -, "
            "starting with a letter or digit"
        )
    return None


def safe_name(text: str) -> str:
    """A name from the network (an mDNS instance name) made acceptable: unsafe runs of
    characters become "-", and it is cut to MAX_NAME."""
    cleaned = _UNSAFE.sub("-", text).strip(" -._:@+/()")[:MAX_NAME].rstrip()
    return cleaned or "backend"


def url_problem(url: object) -> str | None:
    """Why ``url`` cannot be a backend's base URL, or None when it can."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return "must start with http:// or https://"
    if len(url) > MAX_URL or any(c.isspace() or not c.isprintable() for c in url):
        return "must be a URL without spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "has an invalid host or port"
    if not parts.hostname or (port is not None and not 0 < port < 65536):
        return "has an invalid host or port"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def without_credentials(url: str) -> str:
    """``url`` minus any ``user:password@``: Nexus never sends them (keys come from
    ``api_key_env``), so they are dropped before they can reach a log or a listing."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class BackendStatus(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"
    DRAINING = "draining"


class DiscoverySource(StrEnum):
    STATIC = "static"
    MDNS = "mdns"
    MANUAL = "manual"


@dataclass(slots=True)
class Model:
    """A model as one backend serves it. Capabilities are tri-state: ``None`` means the
    backend does not say, and routing treats it as "may support" (no false negatives)."""

    id: str
    name: str = ""
    context_length: int | None = None
    supports_chat: bool = True
    supports_vision: bool | None = None
    supports_tools: bool | None = None
    supports_json_mode: bool | None = None
    supports_embeddings: bool | None = None
    # Legacy /v1/completions: unknown until a backend answers it (404: no).
    supports_completions: bool | None = None
    max_output_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name or self.id,
            "context_length": self.context_length,
            "capabilities": {
                "chat": self.supports_chat,
                "vision": self.supports_vision,
                "tools": self.supports_tools,
                "json_mode": self.supports_json_mode,
                "embeddings": self.supports_embeddings,
            },
            "max_output_tokens": self.max_output_tokens,
        }


def backend_id(name: str) -> str:
    """Stable id derived from the backend's name, so restarts keep ids (and history)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "nexus-backend:" + name))


@dataclass(slots=True, eq=False)
class Backend:
    name: str
    url: str
    type: str = "generic"
    priority: int = 50
    discovery_source: DiscoverySource = DiscoverySource.STATIC
    api_key_env: str = ""
    context_length: int | None = None  # configured: overrides the probed one
    tls: TLS | None = None  # certificate policy for https (None: verify with system CAs)
    max_concurrent: int | None = None  # configured capacity (requests served at once)
    limiter: TokenBucket | None = None  # configured rate limit (F22)
    reported_slots: int | None = None  # what its last probe said (llama.cpp total_slots)
    zone: str = "restricted"  # privacy zone: "restricted" | "open"
    tier: int = 3  # capability tier of its models, 1..5 (F13)
    model_tiers: dict[str, int] = field(default_factory=dict)  # per-model overrides
    scores: dict[str, int] = field(default_factory=dict)  # declared capability scores
    expose: tuple[str, ...] = ()  # only these of its models (config ``models``); () = all
    max_output_tokens: int = 4096  # max_tokens for providers that require one (Anthropic)
    prices: dict[str, Price] = field(default_factory=dict)  # configured, by model
    id: str = ""
    status: BackendStatus = BackendStatus.UNKNOWN
    last_health_check: float | None = None
    last_error: str | None = None
    models: dict[str, Model] = field(default_factory=dict)
    pending_requests: int = 0
    serving: dict[str, int] = field(default_factory=dict)  # model -> requests sent (keys > 0)
    total_requests: int = 0
    failed_requests: int = 0
    avg_latency_ms: float = 0.0
    service_seconds: float = 0.0  # how long a request holds a slot (EWMA): queue estimates
    probe_latency_ms: float | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    penalized_until: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = without_credentials(self.url).rstrip("/")
        if not self.id:
            self.id = backend_id(self.name)

    @property
    def routable(self) -> bool:
        return self.status is BackendStatus.HEALTHY

    @property
    def cloud(self) -> bool:
        """A provider's API (OpenAI, Anthropic, Google), not a box of the user's."""
        return self.type in CLOUD_TYPES

    def tier_of(self, model: str) -> int:
        return self.model_tiers.get(model, self.tier) if self.model_tiers else self.tier

    @property
    def capacity(self) -> int | None:
        """Requests it serves at once: configured, else reported, else unknown (None)."""
        return self.max_concurrent or self.reported_slots

    @property
    def busy(self) -> bool:
        """At capacity: another request would only wait in the backend's own queue."""
        capacity = self.max_concurrent or self.reported_slots
        return capacity is not None and self.pending_requests >= capacity

    def limited(self, now: float) -> bool:
        """Out of its rate limit's tokens for now."""
        return self.limiter is not None and not self.limiter.ready(now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "type": self.type,
            "status": self.status.value,
            "priority": self.priority,
            "kind": "cloud" if self.cloud else "local",
            "zone": self.zone,
            "tier": self.tier,
            "model_tiers": dict(self.model_tiers),
            "scores": dict(self.scores),
            "discovery_source": self.discovery_source.value,
            "last_health_check": self.last_health_check,
            "last_error": self.last_error,
            "pending_requests": self.pending_requests,
            "capacity": self.capacity,
            "rate_limit_per_minute": (
                None if self.limiter is None else round(self.limiter.rate * 60, 3)
            ),
            "total_requests": self.total_requests,
            "failed_requests": self.failed_requests,
            "avg_latency_ms": round(self.avg_latency_ms, 3),
            "probe_latency_ms": (
                None if self.probe_latency_ms is None else round(self.probe_latency_ms, 3)
            ),
            "models": [m.to_dict() for m in self.models.values()],
            "metadata": dict(self.metadata),
        }


class Registry:
    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self._by_model: dict[str, list[Backend]] = {}
        # Told of every removal, so per-backend state elsewhere (metric series, quality
        # profiles) goes with the backend instead of piling up.
        self.on_remove: list[Callable[[Backend], None]] = []
        # Told when a backend may serve what it could not before (added; its status, its
        # models or their capabilities, or its reported slots changed): the queue looks
        # again at who waits. Not told of a probe that found everything as it was.
        self.on_change: list[Callable[[Backend], None]] = []
        # Bumped whenever which backends serve which model changes (what routing may keep).
        self.generation = 0

    # -- membership ---------------------------------------------------------------------

    def add_backend(self, backend: Backend) -> Backend:
        if backend.id in self._backends:
            raise ValueError(f"backend {backend.name!r} already exists")
        self._backends[backend.id] = backend
        self._index(backend, backend.models)
        self._changed(backend)
        return backend

    def remove_backend(self, backend_id: str) -> Backend | None:
        backend = self._backends.pop(backend_id, None)
        if backend is not None:
            self._unindex(backend)
            for listener in self.on_remove:
                listener(backend)
        return backend

    def get_backend(self, backend_id: str) -> Backend | None:
        return self._backends.get(backend_id)

    def find(self, ref: str) -> Backend | None:
        """A backend by id, name or URL (what a person types on the command line)."""
        ref_url = ref.rstrip("/")
        for backend in self._backends.values():
            if ref in (backend.id, backend.name) or ref_url == backend.url:
                return backend
        return None

    def get_all_backends(self) -> list[Backend]:
        return list(self._backends.values())

    def get_healthy_backends(self) -> list[Backend]:
        return [b for b in self._backends.values() if b.routable]

    def get_backends_for_model(self, model: str) -> list[Backend]:
        return self._by_model.get(model, [])

    def has_model(self, model: str) -> bool:
        return model in self._by_model

    def model_ids(self) -> list[str]:
        return sorted(self._by_model)

    def healthy_model_ids(self) -> list[str]:
        return sorted(m for m, bs in self._by_model.items() if any(b.routable for b in bs))

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends.values()))

    def __len__(self) -> int:
        return len(self._backends)

    # -- state updates ------------------------------------------------------------------

    def update_status(
        self, backend_id: str, status: BackendStatus, error: str | None = None
    ) -> None:
        backend = self._backends[backend_id]
        changed = backend.status is not status
        backend.status = status
        backend.last_error = error
        if changed:
            self._changed(backend)

    def update_models(
        self, backend_id: str, models: Iterable[Model], *, slots: int | None = None
    ) -> None:
        """What a probe found: the backend's models and the slots it reported (None: it does
        not say). Listeners are told only when either changed (a model, one of its
        capabilities or context, or the capacity): most probes change nothing."""
        backend = self._backends[backend_id]
        new = {m.id: m for m in models}
        changed = new != backend.models or slots != backend.reported_slots
        backend.reported_slots = slots
        if new.keys() != backend.models.keys():
            self._unindex(backend)
            backend.models = new
            self._index(backend, new)
        else:
            backend.models = new
        if changed:
            self._changed(backend)

    def _changed(self, backend: Backend) -> None:
        for listener in self.on_change:
            listener(backend)

    def increment_pending(self, backend: Backend) -> None:
        backend.pending_requests += 1
        backend.total_requests += 1

    def decrement_pending(self, backend: Backend) -> None:
        # Never below zero, whatever order the finally-blocks of a cancelled request run in.
        backend.pending_requests = max(0, backend.pending_requests - 1)

    def begin_serving(self, backend: Backend, model: str, reserved: bool = False) -> None:
        """A request for ``model`` is sent to ``backend``: it holds a slot (counted already
        when the queue ``reserved`` it) until ``end_serving``."""
        if not reserved:
            self.increment_pending(backend)
        backend.serving[model] = backend.serving.get(model, 0) + 1

    def end_serving(self, backend: Backend, model: str) -> None:
        # Keys only while > 0: the dict never outgrows the models being served right now.
        left = backend.serving.get(model, 0) - 1
        if left > 0:
            backend.serving[model] = left
        else:
            backend.serving.pop(model, None)
        self.decrement_pending(backend)

    def update_latency(self, backend: Backend, ms: float) -> None:
        if backend.avg_latency_ms == 0.0:
            backend.avg_latency_ms = ms
        else:
            backend.avg_latency_ms += LATENCY_EWMA_ALPHA * (ms - backend.avg_latency_ms)

    def penalize(self, backend: Backend, seconds: float, error: str) -> None:
        """A live request failed here: route around it now instead of waiting for probes."""
        backend.failed_requests += 1
        backend.penalized_until = time.monotonic() + seconds
        backend.last_error = error

    # -- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"backends": [b.to_dict() for b in self._backends.values()]}

    # -- index ----------------------------------------------------------------------------

    def _index(self, backend: Backend, models: Iterable[str]) -> None:
        self.generation += 1
        for model in models:
            self._by_model.setdefault(model, []).append(backend)

    def _unindex(self, backend: Backend) -> None:
        self.generation += 1
        for model in backend.models:
            holders = self._by_model.get(model)
            if holders is None:
                continue
            holders[:] = [b for b in holders if b is not backend]
            if not holders:
                del self._by_model[model]
