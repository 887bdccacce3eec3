"""In-process micro-benchmarks of Nexus' per-request work, imported from ``nexus``.

* routing: ``Router.plan`` + ``Router.select`` with 5 and 50 healthy backends that all
  serve the same 200 models (worst case: every backend is a candidate), smart strategy,
  with a quality tracker as production wires it;
* metrics: ``Metrics(registry).record(record)`` per finished request;
* SSE relay: ``SSEParser.feed`` of one upstream read holding one chunk event, plus
  ``event_data`` on the event (what the relay does per event).

Each is timed in batches (``perf_counter_ns``); the median batch is reported, in µs per
operation, with the best batch alongside.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

CHAT_BODY = {
    "model": "model-000",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ],
    "max_tokens": 64,
}


def timed(fn: Callable[[int], None], ops: int, batches: int) -> dict[str, float]:
    """Run ``fn(i)`` ``ops`` times per batch; µs per op (median and best batch)."""
    per_op: list[float] = []
    for _ in range(batches):
        started = time.perf_counter_ns()
        for i in range(ops):
            fn(i)
        per_op.append((time.perf_counter_ns() - started) / ops / 1000)
    return {"median_us": statistics.median(per_op), "best_us": min(per_op), "ops": ops * batches}


def build_registry(backends: int, models: int) -> Any:
    from nexus.registry import Backend, BackendStatus, Model, Registry

    registry = Registry()
    for b in range(backends):
        backend = Backend(name=f"backend-{b:02d}", url=f"http://10.0.0.{b}:8000", type="vllm")
        backend.priority = 10 + b % 5 * 10
        backend.avg_latency_ms = 20.0 + b
        registry.add_backend(backend)
        registry.update_models(
            backend.id, [Model(id=f"model-{m:03d}", context_length=8192) for m in range(models)]
        )
        registry.update_status(backend.id, BackendStatus.HEALTHY)
    return registry


def routing(backends: int, models: int = 200, ops: int = 2000, batches: int = 7) -> dict[str, Any]:
    from nexus.config import RoutingConfig
    from nexus.quality import QualityTracker
    from nexus.routing.requirements import inspect_chat
    from nexus.routing.router import Router

    registry = build_registry(backends, models)
    router = Router(registry, RoutingConfig(), QualityTracker())
    reqs = []
    for m in range(models):
        reqs.append(inspect_chat({**CHAT_BODY, "model": f"model-{m:03d}"}))

    def one(i: int) -> None:
        req = reqs[i % models]
        plan = router.plan(req.model)
        router.select(plan, req, attempts_per_model=3)

    return {"backends": backends, "models": models, **timed(one, ops, batches)}


def metrics(ops: int = 5000, batches: int = 7) -> dict[str, Any]:
    from nexus.metrics import Metrics
    from nexus.records import RequestRecord

    sink = Metrics(build_registry(5, 20))
    record = RequestRecord(
        request_id="0123456789abcdef01234567",
        endpoint="chat",
        model="model-001",
        routed_model="model-001",
        backend="backend-01",
        backend_type="vllm",
        status=200,
        route_reason="best-score",
        tokens_prompt=21,
        tokens_completion=9,
        upstream_seconds=0.012,
        ttft_seconds=0.004,
        duration_seconds=0.013,
    )
    return timed(lambda _: sink.record(record), ops, batches)


def sse_events(count: int = 100) -> list[bytes]:
    base = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bench-model",
    }
    out = []
    for i in range(count):
        choice = {"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}
        out.append(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")
    return out


def sse(ops: int = 20000, batches: int = 7) -> dict[str, Any]:
    from nexus.transport.sse import SSEParser, event_data

    events = sse_events()
    parser = SSEParser()

    def one(i: int) -> None:
        for block in parser.feed(events[i % 100]):
            event_data(block)

    return {"events_per_read": 1, **timed(one, ops, batches)}


def run_all(quick: bool) -> dict[str, Any]:
    scale = 5 if quick else 1
    return {
        "routing_5": routing(5, ops=2000 // scale),
        "routing_50": routing(50, ops=2000 // scale),
        "metrics": metrics(ops=5000 // scale),
        "sse": sse(ops=20000 // scale),
    }


if __name__ == "__main__":
    print(orjson.dumps(run_all(quick=False), option=orjson.OPT_INDENT_2).decode())
