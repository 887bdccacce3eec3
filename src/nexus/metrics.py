"""Request metrics (F09): Prometheus exposition at ``/metrics`` and the ``/v1/stats`` JSON.

Label values never come from raw client input: a model is labelled by name only if some
backend lists it or the config names it (alias, fallback), else ``unknown``; backends are
labelled by their name. Gauges (healthy backends, pending requests, ...) are read from the
registry at scrape time, so they cost nothing per request. Recording a request is a few
dict lookups into cached label children.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nexus.config import RoutingConfig
from nexus.records import RequestRecord
from nexus.registry import Backend, Registry

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
UNKNOWN_MODEL = "unknown"
NO_BACKEND = "none"


class RegistryCollector(Collector):
    """Gauges computed from the registry when Prometheus scrapes."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backends = self.registry.get_all_backends()
        yield GaugeMetricFamily("nexus_backends_total", "Known backends", len(backends))
        yield GaugeMetricFamily(
            "nexus_backends_healthy", "Healthy backends", sum(1 for b in backends if b.routable)
        )
        pending = GaugeMetricFamily(
            "nexus_pending_requests", "In-flight requests per backend", labels=["backend"]
        )
        for backend in backends:
            pending.add_metric([backend.name], backend.pending_requests)
        yield pending
        yield GaugeMetricFamily(
            "nexus_models_available",
            "Models with a healthy backend",
            len(self.registry.healthy_model_ids()),
        )


class Metrics:
    def __init__(self, registry: Registry, routing: RoutingConfig | None = None) -> None:
        self.registry = registry
        self.configured_models = set(routing.aliases) | set(routing.fallbacks) if routing else set()
        self.prom = CollectorRegistry(auto_describe=False)
        r = self.prom
        self.requests = Counter(
            "nexus_requests_total",
            "Total number of requests",
            ["model", "backend", "status"],
            registry=r,
        )
        self.errors = Counter("nexus_errors_total", "Errors by type", ["type"], registry=r)
        self.fallbacks = Counter(
            "nexus_fallbacks_total",
            "Requests served by a fallback model",
            ["from_model", "to_model"],
            registry=r,
        )
        self.duration = Histogram(
            "nexus_request_duration_seconds",
            "Request duration",
            ["model", "backend"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "nexus_time_to_first_token_seconds",
            "Time to the first stream event",
            ["model", "backend"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "nexus_overhead_seconds",
            "Time spent in Nexus itself (total minus upstream)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "nexus_tokens_total",
            "Tokens by model, backend and type (prompt/completion)",
            ["model", "backend", "type"],
            registry=r,
        )
        self.backend_latency = Histogram(
            "nexus_backend_latency_seconds",
            "Health check latency per backend",
            ["backend"],
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.probe_duration = Histogram(
            "nexus_health_check_duration_seconds",
            "Duration of health checks (ok or not)",
            ["backend"],
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        r.register(RegistryCollector(registry))
        self._children: dict[tuple[Any, ...], Any] = {}
        self.started = time.monotonic()
        self.total = self.success = self.failed = 0
        self.by_model: dict[str, list[float]] = {}  # model -> [requests, total seconds]

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def model_label(self, model: str) -> str:
        if self.registry.has_model(model) or model in self.configured_models:
            return model
        return UNKNOWN_MODEL

    def record(self, rec: RequestRecord) -> None:
        """Recorder sink: count one finished request."""
        model = self.model_label(rec.model)
        backend = rec.backend or NO_BACKEND
        self._child(self.requests, model, backend, str(rec.status)).inc()
        self._child(self.duration, model, backend).observe(rec.duration_seconds)
        self.overhead.observe(max(rec.duration_seconds - rec.upstream_seconds, 0.0))
        self.total += 1
        if rec.error_type:
            self._child(self.errors, rec.error_type).inc()
            self.failed += 1
        else:
            self.success += 1
        if rec.ttft_seconds is not None:
            self._child(self.ttft, model, backend).observe(rec.ttft_seconds)
        if rec.tokens_prompt:
            self._child(self.tokens, model, backend, "prompt").inc(rec.tokens_prompt)
        if rec.tokens_completion:
            self._child(self.tokens, model, backend, "completion").inc(rec.tokens_completion)
        if rec.fallback_chain:
            chain = rec.fallback_chain
            self._child(
                self.fallbacks, self.model_label(chain[0]), self.model_label(chain[-1])
            ).inc()
        entry = self.by_model.get(model)
        if entry is None:
            entry = self.by_model[model] = [0, 0.0]
        entry[0] += 1
        entry[1] += rec.duration_seconds

    def observe_probe(self, backend: Backend, seconds: float, ok: bool) -> None:
        """Health checker observer."""
        self._child(self.probe_duration, backend.name).observe(seconds)
        if ok:
            self._child(self.backend_latency, backend.name).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.prom)

    def stats(self, quality: dict[str, Any] | None = None) -> dict[str, Any]:
        backends = {
            b.name: {
                "requests": b.total_requests,
                "failed": b.failed_requests,
                "avg_latency_ms": round(b.avg_latency_ms, 3),
                "pending": b.pending_requests,
                "status": b.status.value,
            }
            for b in self.registry.get_all_backends()
        }
        models = {
            name: {"requests": int(n), "avg_duration_ms": round(total / n * 1000, 3)}
            for name, (n, total) in self.by_model.items()
        }
        return {
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "requests": {"total": self.total, "success": self.success, "errors": self.failed},
            "backends": backends,
            "models": models,
            "quality": quality or {},
        }
