"""Request metrics (F09): Prometheus exposition at ``/metrics`` and the ``/v1/stats`` JSON.

Label values never come from raw client input: a model is labelled by name only if some
backend lists it or the config names it (alias, fallback), else ``unknown``; backends are
labelled by their name. Gauges (healthy backends, pending requests, ...) are read from the
registry at scrape time, so they cost nothing per request.

Counters and histograms are plain dicts keyed by label values, updated on the event loop
(the only thread that records), and turned into prometheus_client metric families when
Prometheus scrapes: recording a request is a handful of dict updates, without the
per-sample locks of prometheus_client's own metric objects.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nexus import store, tokens
from nexus.budget import LEVELS, Budget
from nexus.config import RoutingConfig
from nexus.records import RequestRecord
from nexus.registry import Backend, Registry

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
log = logging.getLogger("nexus")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNKNOWN_MODEL = "unknown"
# A queued request's error code -> the reason it was not served (nexus_queue_rejections_total).
QUEUE_REJECTIONS = {
    "queue_full": "full",
    "queue_evicted": "evicted",
    "queue_timeout": "timeout",
    "shutting_down": "shutdown",
}
NO_BACKEND = "none"
STATUS_LABELS = {status: str(status) for status in range(100, 600)}  # (str() per request)


class LabelledSeries:
    """Series kept in a dict by label values."""

    __slots__ = ("help", "labels", "name", "values")
    values: dict[tuple[str, ...], Any]

    def forget(self, position: int, value: str) -> None:
        """Drop every series whose label at ``position`` is ``value``."""
        for key in [k for k in self.values if k[position] == value]:
            del self.values[key]


class CounterVec(LabelledSeries):
    __slots__ = ()

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[key] = self.values.get(key, 0.0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(key, value)
        return family


class HistogramVec(LabelledSeries):
    __slots__ = ("bounds",)

    def __init__(
        self, name: str, help: str, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        self.name, self.help, self.labels, self.bounds = name, help, labels, bounds
        # key -> per-bucket counts (not cumulative; the last one is +Inf) followed by the sum
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        entry = self.values.get(key) or self.entry(key)
        entry[bisect_left(self.bounds, value)] += 1  # le is inclusive
        entry[-1] += value

    def entry(self, key: tuple[str, ...]) -> list[float]:
        """``key``'s counts, made when it has none yet."""
        entry = self.values.get(key)
        if entry is None:
            entry = self.values[key] = [0.0] * (len(self.bounds) + 2)
        return entry

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        edges = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        for key, entry in self.values.items():
            running, buckets = 0.0, []
            for edge, count in zip(edges, entry[:-1], strict=True):
                running += count
                buckets.append((edge, running))
            family.add_metric(list(key), buckets, sum_value=entry[-1])
        return family


class Cell:
    """The series one kind of request adds to (its model, backend, status and endpoint):
    their label values and its duration counts, made once, not for every request."""

    __slots__ = ("completion", "duration", "labels", "prompt", "requests")

    def __init__(self, requests: tuple[str, str, str, str], duration: list[float]) -> None:
        model, backend, _, _ = self.requests = requests
        self.labels = (model, backend)
        self.duration = duration
        self.prompt = (model, backend, "prompt")  # nexus_tokens_total's
        self.completion = (model, backend, "completion")


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
        tokens = GaugeMetricFamily(
            "nexus_rate_limit_tokens",
            "Requests a rate-limited backend may be sent now (its token bucket)",
            labels=["backend"],
        )
        now = time.monotonic()
        for backend in backends:
            if backend.limiter is not None:
                tokens.add_metric([backend.name], backend.limiter.available(now))
        yield tokens
        yield GaugeMetricFamily(
            "nexus_models_available",
            "Models with a healthy backend",
            len(self.registry.healthy_model_ids()),
        )


def budget_gauges(budget: Budget) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "nexus_budget_spent_usd", "Cloud spend in the current billing cycle", budget.spent
    )
    yield GaugeMetricFamily("nexus_budget_limit_usd", "The monthly budget", budget.limit)
    yield GaugeMetricFamily(
        "nexus_budget_status",
        "Budget state: 0 normal, 1 past the soft limit, 2 at the hard limit",
        LEVELS[budget.status()],
    )


class Metrics(Collector):
    def __init__(self, registry: Registry, routing: RoutingConfig | None = None) -> None:
        self.registry = registry
        self.configured_models = set(routing.aliases) | set(routing.fallbacks) if routing else set()
        self.requests = CounterVec(
            "nexus_requests_total",
            "Total number of requests",
            ("model", "backend", "status", "endpoint"),
        )
        self.errors = CounterVec("nexus_errors_total", "Errors by type", ("type",))
        self.fallbacks = CounterVec(
            "nexus_fallbacks_total",
            "Requests served by a fallback model",
            ("from_model", "to_model"),
        )
        self.duration = HistogramVec(
            "nexus_request_duration_seconds",
            "Request duration",
            ("model", "backend"),
            DURATION_BUCKETS,
        )
        self.ttft = HistogramVec(
            "nexus_time_to_first_token_seconds",
            "Time to the first stream event",
            ("model", "backend"),
            DURATION_BUCKETS,
        )
        self.overhead = HistogramVec(
            "nexus_overhead_seconds",
            "Time spent in Nexus itself (total minus upstream)",
            (),
            FAST_BUCKETS,
        )
        self.tokens = CounterVec(
            "nexus_tokens_total",
            "Tokens by model, backend and type (prompt/completion)",
            ("model", "backend", "type"),
        )
        self.cost = CounterVec(
            "nexus_cost_usd_total", "What cloud requests cost, in USD", ("backend", "model")
        )
        self.privacy_blocks = CounterVec(
            "nexus_privacy_blocks_total",
            "Requests a privacy zone rule changed: backends of the other zone kept out "
            "(blocked), or history stripped for a cross-zone overflow (stripped)",
            ("zone", "action"),
        )
        # Tenants are named by the admin (never by a client): a bounded label.
        self.tenant_requests = CounterVec(
            "nexus_tenant_requests_total", "Requests per tenant (auth on)", ("tenant", "status")
        )
        self.tenant_tokens = CounterVec(
            "nexus_tenant_tokens_total", "Tokens per tenant, by type", ("tenant", "type")
        )
        self.tenant_cost = CounterVec(
            "nexus_tenant_cost_usd_total", "What a tenant's cloud requests cost", ("tenant",)
        )
        self.queue_wait = HistogramVec(
            "nexus_queue_wait_seconds",
            "Time requests spent waiting in the queue (those that waited)",
            (),
            DURATION_BUCKETS,
        )
        self.queue_rejections = CounterVec(
            "nexus_queue_rejections_total",
            "Queued requests answered 503 instead of served: full, evicted, timeout, shutdown",
            ("reason",),
        )
        self.queue_depth: Callable[[], Mapping[str, int]] | None = None  # set with a queue
        self.budget: Budget | None = None  # set with a budget
        self.unknown_endpoints = CounterVec(
            "nexus_unknown_endpoint_total",
            "Requests to endpoints Nexus does not serve, by method",
            ("method",),
        )
        self.backend_latency = HistogramVec(
            "nexus_backend_latency_seconds",
            "Health check latency per backend",
            ("backend",),
            PROBE_BUCKETS,
        )
        self.probe_duration = HistogramVec(
            "nexus_health_check_duration_seconds",
            "Duration of health checks (ok or not)",
            ("backend",),
            PROBE_BUCKETS,
        )
        self.prom = CollectorRegistry(auto_describe=False)
        self.prom.register(self)
        self.prom.register(RegistryCollector(registry))
        self.started = time.monotonic()
        # The series a request adds to, by what its record says: one lookup per request.
        self._cells: dict[tuple[str, str, int, str], Cell] = {}
        self._generation = registry.generation
        self._overhead = self.overhead.entry(())

    def collect(self) -> Iterator[Metric]:
        for vec in (
            self.requests,
            self.errors,
            self.fallbacks,
            self.duration,
            self.ttft,
            self.overhead,
            self.tokens,
            self.cost,
            self.privacy_blocks,
            self.tenant_requests,
            self.tenant_tokens,
            self.tenant_cost,
            self.queue_wait,
            self.queue_rejections,
            self.unknown_endpoints,
            self.backend_latency,
            self.probe_duration,
        ):
            yield vec.family()
        counted = CounterMetricFamily(
            "nexus_token_counts",
            "Tokens counted by Nexus's tokenizer registry, by how far the count can be trusted",
            labels=["method"],
        )
        for method, count in tokens.COUNTED.items():
            counted.add_metric([method], count)
        yield counted
        errors = CounterMetricFamily(
            "nexus_store_errors",
            "Operations on the state store (SQLite file or Redis) that failed; requests go on "
            "meanwhile from what this process knows",
            labels=["operation"],
        )
        for operation, count in sorted(store.ERRORS.items()):
            errors.add_metric([operation], count)
        yield errors
        if self.budget is not None:
            yield from budget_gauges(self.budget)
        if self.queue_depth is not None:
            depth = GaugeMetricFamily(
                "nexus_queue_depth", "Requests waiting in the queue", labels=["priority"]
            )
            for priority, count in self.queue_depth().items():
                depth.add_metric([priority], count)
            yield depth

    def model_label(self, model: str) -> str:
        if self.registry.has_model(model) or model in self.configured_models:
            return model
        return UNKNOWN_MODEL

    def record(self, rec: RequestRecord) -> None:
        """Recorder sink: count one finished request."""
        generation = self.registry.generation
        if generation != self._generation:  # a model's label may have changed
            self._cells.clear()
            self._generation = generation
        cell = self._cells.get((rec.model, rec.backend, rec.status, rec.endpoint))
        if cell is None:
            cell = self._cell(rec)
        counts = self.requests.values
        counts[cell.requests] = counts.get(cell.requests, 0.0) + 1.0
        seconds = rec.duration_seconds
        entry = cell.duration
        entry[bisect_left(DURATION_BUCKETS, seconds)] += 1  # (HistogramVec.observe, inline)
        entry[-1] += seconds
        overhead = seconds - rec.upstream_seconds
        if overhead < 0.0:
            overhead = 0.0
        entry = self._overhead
        entry[bisect_left(FAST_BUCKETS, overhead)] += 1
        entry[-1] += overhead
        model, backend = labels = cell.labels
        status = cell.requests[2]
        if rec.error_type:
            self.errors.inc((rec.error_type,))
        if rec.ttft_seconds is not None:
            self.ttft.observe(labels, rec.ttft_seconds)
        if rec.tokens_prompt:
            self.tokens.inc(cell.prompt, rec.tokens_prompt)
        if rec.tokens_completion:
            self.tokens.inc(cell.completion, rec.tokens_completion)
        if rec.cost_usd:
            self.cost.inc((backend, model), rec.cost_usd)
        if rec.tenant:
            self.tenant_requests.inc((rec.tenant, status))
            if rec.tokens_prompt:
                self.tenant_tokens.inc((rec.tenant, "prompt"), rec.tokens_prompt)
            if rec.tokens_completion:
                self.tenant_tokens.inc((rec.tenant, "completion"), rec.tokens_completion)
            if rec.cost_usd:
                self.tenant_cost.inc((rec.tenant,), rec.cost_usd)
        if rec.queue_wait_seconds is not None:
            self.queue_wait.observe((), rec.queue_wait_seconds)
            if (reason := QUEUE_REJECTIONS.get(rec.error_type)) is not None:
                self.queue_rejections.inc((reason,))
        if rec.privacy_action:
            self.privacy_blocks.inc((rec.privacy_zone, rec.privacy_action))
        if rec.fallback_chain:
            chain = rec.fallback_chain
            self.fallbacks.inc((self.model_label(chain[0]), self.model_label(chain[-1])))

    def _cell(self, rec: RequestRecord) -> Cell:
        model, backend = self.model_label(rec.model), rec.backend or NO_BACKEND
        status = STATUS_LABELS.get(rec.status) or str(rec.status)
        cell = Cell((model, backend, status, rec.endpoint), self.duration.entry((model, backend)))
        if model != UNKNOWN_MODEL:  # (a name a client made up is not kept)
            self._cells[(rec.model, rec.backend, rec.status, rec.endpoint)] = cell
        return cell

    def unknown_endpoint(self, scope: MutableMapping[str, Any]) -> None:
        """A request no route matched: one log line and a count, so an operator sees which
        client expects an API Nexus does not serve (``/v1/responses``, ``/v1/audio/...``)."""
        method = scope["method"]
        label = method if method in HTTP_METHODS else "other"
        self.unknown_endpoints.inc((label,))
        path = "".join(c if c.isprintable() else "?" for c in scope["path"][:200])
        log.info("unknown endpoint: %s %s", label, path)

    def forget_backend(self, backend: Backend) -> None:
        """Registry listener: a removed backend's series go with it (a thousand add/remove
        cycles must not grow /metrics)."""
        self._cells.clear()  # (they hold the series removed here)
        name = backend.name
        for vec in (self.requests, self.duration, self.ttft, self.tokens):
            vec.forget(1, name)
        self.cost.forget(0, name)
        for vec in (self.backend_latency, self.probe_duration):
            vec.forget(0, name)

    def observe_probe(self, backend: Backend, seconds: float, ok: bool) -> None:
        """Health checker observer."""
        self.probe_duration.observe((backend.name,), seconds)
        if ok:
            self.backend_latency.observe((backend.name,), seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.prom)

    def stats(self, quality: dict[str, Any] | None = None) -> dict[str, Any]:
        """/v1/stats, derived from the same counters Prometheus reads."""
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
        per_model: dict[str, list[float]] = {}  # model -> [requests, seconds]
        for (model, _), entry in self.duration.values.items():
            totals = per_model.setdefault(model, [0.0, 0.0])
            totals[0] += sum(entry[:-1])
            totals[1] += entry[-1]
        models = {
            name: {"requests": int(n), "avg_duration_ms": round(seconds / n * 1000, 3)}
            for name, (n, seconds) in per_model.items()
        }
        total = int(sum(self.requests.values.values()))
        errors = int(sum(self.errors.values.values()))
        return {
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "requests": {"total": total, "success": total - errors, "errors": errors},
            "backends": backends,
            "models": models,
            "queue": self.queue_stats(),
            "quality": quality or {},
        }

    def queue_stats(self) -> dict[str, Any] | None:
        """Waiting now by priority; waited so far (count, mean seconds); rejections."""
        if self.queue_depth is None:
            return None
        waits = self.queue_wait.values.get(())
        waited = int(sum(waits[:-1])) if waits else 0
        return {
            "depth": dict(self.queue_depth()),
            "waited": waited,
            "avg_wait_ms": round(waits[-1] / waited * 1000, 3) if waits and waited else None,
            "rejections": {key[0]: int(n) for key, n in self.queue_rejections.values.items()},
        }
