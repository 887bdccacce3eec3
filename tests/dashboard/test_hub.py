"""The dashboard hub on its own: bounded structures, deltas, and slow-viewer handling."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import orjson

from nexus.dashboard.live import (
    BUCKET_SECONDS,
    HISTORY_SIZE,
    MAX_SERIES,
    WINDOW_BUCKETS,
    Hub,
    Viewer,
)
from nexus.records import RequestRecord
from nexus.registry import Backend, BackendStatus, Model, Registry


def record(i: int, backend: str = "a", *, ts: float = 1_000_000.0, **kw: Any) -> RequestRecord:
    rec = RequestRecord(request_id=f"r{i}", endpoint="chat", model="m", backend=backend, **kw)
    rec.timestamp = ts
    rec.duration_seconds = 0.01
    return rec


def test_sink_is_synchronous_and_bounded() -> None:
    hub = Hub(Registry())
    assert not inspect.iscoroutinefunction(hub.record)
    for i in range(HISTORY_SIZE * 3):
        hub.record(record(i, backend=f"b{i}", ts=1_000_000.0 + i * BUCKET_SECONDS))
    assert len(hub.history) == HISTORY_SIZE
    assert hub.seq == HISTORY_SIZE * 3
    assert hub.history[0]["seq"] == HISTORY_SIZE * 2 + 1
    assert len(hub.series) <= MAX_SERIES + 1
    assert all(len(s.buckets) <= WINDOW_BUCKETS + 1 for s in hub.series.values())


def test_charts_window_and_pruning() -> None:
    hub = Hub(Registry())
    base = 1_000_000 * BUCKET_SECONDS
    hub.record(record(1, "old", ts=base))
    hub.record(record(2, "new", ts=base + WINDOW_BUCKETS * BUCKET_SECONDS))
    hub.record(
        record(
            3,
            "new",
            ts=base + WINDOW_BUCKETS * BUCKET_SECONDS + 1,
            status=502,
            error_type="backend_error",
        )
    )
    charts = hub.charts(now=base + WINDOW_BUCKETS * BUCKET_SECONDS + 2)
    assert set(charts["backends"]) == {"new"}  # "old" fell out of the window and is forgotten
    assert "old" not in hub.series
    [[_, requests, errors, avg_ms]] = charts["backends"]["new"]
    assert (requests, errors, avg_ms) == (2, 1, 10.0)
    assert charts["all"][-1][1] == 2


def test_history_entry_has_no_content_and_clips_long_text() -> None:
    hub = Hub(Registry())
    hub.record(record(1, error="x" * 5000, error_type="backend_error", status=502))
    entry = hub.history[-1]
    assert len(entry["error"]) <= 500
    assert set(entry) >= {"model", "backend", "status", "ms", "stream", "error", "error_type"}
    assert not {"messages", "content", "prompt", "body"} & set(entry)


def test_delta_reports_changes_once() -> None:
    registry = Registry()
    backend = registry.add_backend(Backend(name="a", url="http://user:pw@127.0.0.1:1/x"))
    hub = Hub(registry, registry_every=0.0, charts_every=0.0)
    assert hub.backends[backend.id]["address"] == "127.0.0.1:1"  # no credentials shown
    registry.update_status(backend.id, BackendStatus.HEALTHY)
    first = hub.delta()
    assert first is not None and [b["status"] for b in first["backends"]] == ["healthy"]
    assert "notices" not in first  # a first good probe is no news
    registry.update_models(backend.id, [Model("llama")])
    registry.update_status(backend.id, BackendStatus.UNHEALTHY, "connection refused")
    hub.record(record(1))
    second = hub.delta()
    assert second is not None
    assert [e["seq"] for e in second["history"]] == [1]
    assert second["notices"][0]["text"] == "a is now unhealthy"
    assert second["backends"][0]["last_error"] == "connection refused"
    assert "charts" in second
    assert hub.delta() is None  # nothing new
    registry.remove_backend(backend.id)
    third = hub.delta()
    assert third is not None and third["removed"] == [backend.id]
    assert third["notices"][0]["text"] == "a is removed"


async def test_slow_viewer_gets_a_snapshot_instead_of_a_backlog() -> None:
    hub = Hub(Registry(), registry_every=0.0)
    viewer = Viewer(send=None)  # type: ignore[arg-type]
    hub.viewers.add(viewer)
    for i in range(viewer.queue.maxsize + 5):
        hub.record(record(i))
        hub.broadcast_once()
    assert viewer.resync
    assert viewer.queue.qsize() == 1  # its backlog was dropped, one wake-up left
    hub.record(record(999))
    hub.broadcast_once()
    assert viewer.queue.qsize() == 1  # nothing queued while a resync is pending
    await asyncio.sleep(0)


def test_requests_ending_out_of_order_still_count() -> None:
    hub = Hub(Registry())
    base = 1_000_000.0 * BUCKET_SECONDS
    hub.record(record(1, ts=base + 30))
    hub.record(record(2, ts=base + 10))  # started earlier, a long stream ending late
    hub.record(record(3, ts=base))
    hub.record(record(4, ts=base + 10))
    buckets = [(int(b[0] - base // BUCKET_SECONDS), int(b[1])) for b in hub.series["a"].buckets]
    assert buckets == [(0, 1), (1, 2), (3, 1)]


def test_a_tick_with_nobody_watching_builds_no_entries_but_keeps_notices() -> None:
    registry = Registry()
    backend = registry.add_backend(Backend(name="a", url="http://127.0.0.1:1"))
    hub = Hub(registry, registry_every=0.0, charts_every=0.0)
    for i in range(5):
        hub.record(record(i))
    registry.update_status(backend.id, BackendStatus.UNHEALTHY, "connection refused")
    hub.broadcast_once()
    assert hub._entries == {}  # no history entry was built for nobody
    assert [n["text"] for n in hub.notices] == ["a is now unhealthy"]
    # A viewer who comes later starts from a snapshot with all of it.
    snapshot = hub.snapshot()
    assert [e["seq"] for e in snapshot["history"]] == [1, 2, 3, 4, 5]
    assert [n["text"] for n in snapshot["notices"]] == ["a is now unhealthy"]
    viewer = Viewer(send=None)  # type: ignore[arg-type]
    hub.viewers.add(viewer)
    hub.record(record(6))
    hub.broadcast_once()
    sent = orjson.loads(viewer.queue.get_nowait())
    assert [e["seq"] for e in sent["history"]] == [6]  # only what came after
