"""What the dashboard shows, kept up to date, and pushed to every viewer.

``Hub`` holds three bounded structures fed by the request recorder (history, chart buckets)
and the registry (backend views, status-change notices). The recorder sink is O(1): it only
appends to deques and sets a flag; it never awaits and never touches a socket.

One background task (the broadcaster) wakes every ``tick`` seconds, works out what changed
since its last pass and encodes a single delta message, which it hands to each viewer's
bounded queue without waiting. Each viewer has its own writer task that sends with a timeout,
so a slow or dead viewer only ever hurts itself: its queue overflows (it is re-sent a full
snapshot later) or its send times out (it is disconnected).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from nexus import __version__
from nexus.asgi import Receive, Send
from nexus.records import RequestRecord
from nexus.registry import Backend, BackendStatus, Registry

if TYPE_CHECKING:
    from nexus.budget import Budget
    from nexus.fleet.service import Fleet

FLEET_OPERATIONS = 10  # the last operations shown

log = logging.getLogger("nexus.dashboard")

HISTORY_SIZE = 100
BUCKET_SECONDS = 10
WINDOW_BUCKETS = 60  # 10 minutes of 10 s buckets
MAX_SERIES = 64  # distinct backend names kept for charts (plus the "all" series)
NOTICES_SIZE = 20
MAX_TEXT = 500  # longest error / name text shown
ALL = ""  # series key of the all-backends aggregate

Json = dict[str, Any]


def clip(text: str | None, limit: int = MAX_TEXT) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


DEFAULT_PORTS = {"http": 80, "https": 443}
GOING_AWAY = 1001


def display_url(url: str) -> str:
    """The backend's address without credentials, path or query: what a person needs."""
    try:
        parsed = urlsplit(url)
        port = parsed.port
    except ValueError:
        return clip(url, 200)
    host = parsed.hostname
    if not host:
        return clip(url, 200)
    shown = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS.get(parsed.scheme):
        shown += f":{port}"
    return clip(shown, 200)


def status_level(status: str) -> str:
    """green / amber / red, by name."""
    if status == BackendStatus.HEALTHY.value:
        return "ok"
    if status == BackendStatus.UNHEALTHY.value:
        return "bad"
    return "warn"


def backend_view(backend: Backend) -> Json:
    """The dashboard's (escaped-later, content-free) picture of one backend."""
    models = sorted(backend.models.values(), key=lambda m: m.id)
    return {
        "id": backend.id,
        "name": clip(backend.name, 200),
        "address": display_url(backend.url),
        "type": clip(backend.type, 40),
        "source": backend.discovery_source.value,
        "zone": backend.zone,
        "tier": backend.tier,
        "status": backend.status.value,
        "last_check": backend.last_health_check,
        "last_error": clip(backend.last_error),
        "pending": backend.pending_requests,
        "total": backend.total_requests,
        "failed": backend.failed_requests,
        "avg_ms": round(backend.avg_latency_ms, 1),
        "models": [
            {
                "id": clip(m.id, 200),
                "tier": backend.tier_of(m.id),
                "ctx": m.context_length,
                "vision": m.supports_vision,
                "tools": m.supports_tools,
                "json": m.supports_json_mode,
                "embeddings": m.supports_embeddings,
                "chat": m.supports_chat,
            }
            for m in models
        ],
    }


def history_entry(seq: int, record: RequestRecord) -> Json:
    """A finished request as the history shows it: metadata only, never message content."""
    ttft = record.ttft_seconds
    return {
        "seq": seq,
        "ts": record.timestamp,
        "id": clip(record.request_id, 128),
        "endpoint": record.endpoint,
        "model": clip(record.model, 200),
        "routed_model": clip(record.routed_model, 200),
        "backend": clip(record.backend, 200),
        "status": record.status,
        "ms": round(record.duration_seconds * 1000, 1),
        "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
        "tokens_in": record.tokens_prompt,
        "tokens_out": record.tokens_completion,
        "stream": record.stream,
        "reason": clip(record.route_reason, 200),
        "retries": record.retry_count,
        "chain": [clip(m, 200) for m in record.fallback_chain[:10]],
        "error_type": clip(record.error_type, 60),
        "error": clip(record.error),
        "queued_ms": (
            None if record.queue_wait_seconds is None else round(record.queue_wait_seconds * 1000)
        ),
    }


class Series:
    """Requests, errors and summed latency per 10 s bucket, for the last few minutes."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        # [bucket index, requests, errors, latency sum in ms]; sparse, newest last.
        self.buckets: deque[list[float]] = deque(maxlen=WINDOW_BUCKETS + 1)

    def add(self, bucket: int, ms: float, error: bool) -> None:
        buckets = self.buckets
        if buckets and (newest := buckets[-1])[0] == bucket:  # almost every request
            newest[1] += 1
            newest[2] += error
            newest[3] += ms
            return
        # Walk back from the newest: almost always zero steps (a new bucket); a request that
        # ended out of order takes at most WINDOW_BUCKETS.
        i = len(buckets)
        while i and buckets[i - 1][0] > bucket:
            i -= 1
        if i and buckets[i - 1][0] == bucket:
            slot = buckets[i - 1]
            slot[1] += 1
            slot[2] += error
            slot[3] += ms
        elif i == len(buckets):
            buckets.append([bucket, 1, int(error), ms])  # a new bucket: the oldest may go
        elif len(buckets) < WINDOW_BUCKETS + 1:
            buckets.insert(i, [bucket, 1, int(error), ms])  # an older one, while there is room

    def window(self, end: int) -> list[list[float]]:
        start = end - WINDOW_BUCKETS + 1
        return [
            [int(b[0]), int(b[1]), int(b[2]), round(b[3] / b[1], 1)]
            for b in self.buckets
            if start <= b[0] <= end
        ]


@dataclass(eq=False)
class Viewer:
    send: Send
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=16))
    resync: bool = False  # its queue overflowed: send a fresh snapshot next
    writer: asyncio.Task[None] | None = None


class Hub:
    def __init__(
        self,
        registry: Registry,
        *,
        uptime: Callable[[], float] = lambda: 0.0,
        tick: float = 0.25,
        registry_every: float = 1.0,
        charts_every: float = 1.0,
        send_timeout: float = 5.0,
        max_viewers: int = 1000,
    ) -> None:
        self.registry = registry
        self.uptime = uptime
        self.queue_depth: Callable[[], Mapping[str, int]] | None = None  # set with a queue
        self._sent_queued: int | None = None
        self.budget: Budget | None = None  # set with a budget
        self._sent_budget: Json | None = None
        self.fleet: Fleet | None = None  # set by the dashboard
        self._sent_fleet: Json | None = None
        self.tick = tick
        self.registry_every = registry_every
        self.charts_every = charts_every
        self.send_timeout = send_timeout
        self.max_viewers = max_viewers
        # The last records themselves; their history entries are built when a view needs
        # them, so at thousands of requests a second only the 100 that are shown get built.
        # The newest is number ``seq``, the one before it seq - 1, and so on.
        self._recent: deque[RequestRecord] = deque(maxlen=HISTORY_SIZE)
        self._entries: dict[int, Json] = {}  # seq -> built entry
        self.seq = 0  # of the newest history entry
        self._all = Series()  # never forgotten by charts(), so kept at hand for record()
        self.series: dict[str, Series] = {ALL: self._all}
        self.notices: deque[Json] = deque(maxlen=NOTICES_SIZE)
        self.backends: dict[str, Json] = {}  # id -> view, as last diffed
        self.viewers: set[Viewer] = set()
        self._task: asyncio.Task[None] | None = None
        self._sent_seq = 0
        self._last_registry = 0.0
        self._charts_bucket = 0
        self._charts_dirty = False  # records arrived since charts were last sent
        self._last_charts = 0.0
        self.diff_backends()  # baseline: the first pass reports no change

    # -- the recorder sink: O(1), synchronous, never raises into the request path ----------

    def record(self, record: RequestRecord) -> None:
        self.seq += 1
        self._recent.append(record)
        ms = record.duration_seconds * 1000
        error = bool(record.error_type) or record.status >= 400
        # Counted when it ended (a long stream belongs where it finished).
        bucket = int((record.timestamp + record.duration_seconds) // BUCKET_SECONDS)
        self._all.add(bucket, ms, error)
        if record.backend:
            series = self.series.get(record.backend)
            if series is None and len(self.series) <= MAX_SERIES:
                series = self.series[record.backend] = Series()
            if series is not None:
                series.add(bucket, ms, error)
        self._charts_dirty = True

    # -- views -------------------------------------------------------------------------------

    @property
    def history(self) -> list[Json]:
        """The last 100 requests as the page shows them, oldest first."""
        built = self._entries
        out = []
        for seq, record in enumerate(self._recent, self.seq - len(self._recent) + 1):
            entry = built.get(seq)
            if entry is None:
                entry = built[seq] = history_entry(seq, record)
            out.append(entry)
        if len(built) > 2 * HISTORY_SIZE:
            self._entries = {e["seq"]: e for e in out}
        return out

    def backend_views(self) -> list[Json]:
        return [backend_view(b) for b in self.registry.get_all_backends()]

    def diff_backends(self) -> tuple[list[Json], list[str], list[Json]]:
        """(changed views, removed ids, new notices) since the previous call."""
        now = time.time()
        current = {v["id"]: v for v in self.backend_views()}
        changed = [v for i, v in current.items() if self.backends.get(i) != v]
        removed = [i for i in self.backends if i not in current]
        notices: list[Json] = []
        if self.backends or not current:  # not on the very first call (baseline)
            for view in changed:
                before = self.backends.get(view["id"])
                if before is None:
                    notices.append(self._notice(now, view, "", f"added ({view['status']})"))
                elif before["status"] != view["status"] and (
                    before["status"] != BackendStatus.UNKNOWN.value
                    or view["status"] != BackendStatus.HEALTHY.value
                ):  # a first successful probe is no news; every other change is
                    notices.append(
                        self._notice(now, view, before["status"], f"now {view['status']}")
                    )
            for backend_id in removed:
                gone = self.backends[backend_id]
                notices.append(self._notice(now, gone, gone["status"], "removed", level="warn"))
        self.backends = current
        self.notices.extend(notices)
        return changed, removed, notices

    @staticmethod
    def _notice(now: float, view: Json, before: str, what: str, level: str = "") -> Json:
        return {
            "ts": now,
            "backend": view["name"],
            "from": before,
            "to": view["status"],
            "level": level or status_level(view["status"]),
            "text": f"{view['name']} is {what}",
        }

    def charts(self, now: float | None = None) -> Json:
        end = int((time.time() if now is None else now) // BUCKET_SECONDS)
        series: dict[str, list[list[float]]] = {}
        for name, s in list(self.series.items()):
            points = s.window(end)
            if points or name == ALL:
                series[name] = points
            else:
                del self.series[name]  # nothing in the window any more: forget it
        return {
            "bucket_seconds": BUCKET_SECONDS,
            "buckets": WINDOW_BUCKETS,
            "end": end,
            "all": series.pop(ALL),
            "backends": series,
        }

    def snapshot(self) -> Json:
        """Everything the page shows: the first WS message, and the polling fallback."""
        return {
            "type": "snapshot",
            "version": __version__,
            "now": time.time(),
            "uptime": round(self.uptime(), 1),
            "seq": self.seq,
            "backends": self.backend_views(),
            "history": self.history,
            "notices": list(self.notices),
            "charts": self.charts(),
            "queued": self.queued(),
            "budget": self.budget_view(),
            "fleet": self.fleet_view(),
        }

    def fleet_view(self) -> Json | None:
        """The last lifecycle operations and the current recommendations (None: nothing)."""
        if self.fleet is None:
            return None
        operations = [
            {
                "id": clip(op.id, 40),
                "what": clip(op.describe(), 300),
                "state": op.state.value,
                "step": clip(op.step, 200),
                "progress": op.progress,
                "reason": clip(op.reason),
            }
            for op in self.fleet.operations()[-FLEET_OPERATIONS:]
        ]
        recommendations = [
            {"id": clip(r.id, 40), "reason": clip(r.reason, 500), "confidence": r.confidence}
            for r in self.fleet.recommendations()
        ]
        if not operations and not recommendations:
            return None
        return {"operations": operations, "recommendations": recommendations}

    def budget_view(self) -> Json | None:
        """This cycle's cloud spend against the limit (None: no budget)."""
        if self.budget is None:
            return None
        budget = self.budget
        return {
            "spent": round(budget.spent, 2),
            "limit": budget.limit,
            "status": budget.status(),
        }

    def queued(self) -> int | None:
        """Requests waiting in the queue now (None: there is no queue)."""
        return None if self.queue_depth is None else sum(self.queue_depth().values())

    # -- the broadcaster ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="nexus-dashboard-broadcaster")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.close_viewers()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                self.broadcast_once()
            except Exception:  # pragma: no cover - keep the dashboard alive whatever happens
                log.exception("dashboard broadcast failed")

    def delta(self, now: float | None = None) -> Json | None:
        """What changed since the previous call, or None when nothing did."""
        mono = time.monotonic()
        now = time.time() if now is None else now
        message: Json = {"type": "delta", "now": now, "seq": self.seq}
        if self.seq != self._sent_seq:
            fresh = [e for e in self.history if e["seq"] > self._sent_seq]
            message["history"] = fresh
            # The viewer lost entries it never saw (more than the ring holds in one tick).
            message["reset_history"] = bool(fresh) and fresh[0]["seq"] > self._sent_seq + 1
            self._sent_seq = self.seq
        if mono - self._last_registry >= self.registry_every:
            self._last_registry = mono
            changed, removed, notices = self.diff_backends()
            if changed:
                message["backends"] = changed
            if removed:
                message["removed"] = removed
            if notices:
                message["notices"] = notices
        bucket = int(now // BUCKET_SECONDS)
        if (self._charts_dirty and mono - self._last_charts >= self.charts_every) or (
            bucket != self._charts_bucket
        ):
            self._charts_dirty = False
            self._last_charts = mono
            self._charts_bucket = bucket
            message["charts"] = self.charts(now)
        queued = self.queued()
        if queued != self._sent_queued:
            self._sent_queued = message["queued"] = queued
        budget = self.budget_view()
        if budget != self._sent_budget:
            self._sent_budget = message["budget"] = budget
        fleet = self.fleet_view()
        if fleet != self._sent_fleet:
            self._sent_fleet = message["fleet"] = fleet
        if len(message) == 3:
            return None
        return message

    def broadcast_once(self) -> None:
        if not self.viewers:
            self._unwatched()
            return
        message = self.delta()
        if message is None:
            return
        text = orjson.dumps(message).decode()
        for viewer in list(self.viewers):
            if viewer.resync:
                continue
            try:
                viewer.queue.put_nowait(text)
            except asyncio.QueueFull:
                # Too slow to keep up: drop its backlog, send it one fresh snapshot later.
                while not viewer.queue.empty():
                    viewer.queue.get_nowait()
                viewer.resync = True
                viewer.queue.put_nowait("")  # wake the writer

    def _unwatched(self) -> None:
        """A tick with nobody watching builds nothing: a viewer starts from a snapshot, made
        when it comes. Only the notices of backend changes cannot be rebuilt then, so the
        registry is still compared on its schedule. (Deltas built for nobody cost a history
        entry per request, several µs, at every rate below 400 requests a second.)"""
        self._sent_seq = self.seq
        mono = time.monotonic()
        if mono - self._last_registry >= self.registry_every:
            self._last_registry = mono
            self.diff_backends()

    # -- viewers -----------------------------------------------------------------------------

    async def serve(self, receive: Receive, send: Send) -> None:
        """One viewer's WebSocket, from the handshake to its end (the ASGI protocol)."""
        if (await receive())["type"] != "websocket.connect":
            return
        if len(self.viewers) >= self.max_viewers:
            await send({"type": "websocket.close", "code": 1013})  # try again later
            return
        await send({"type": "websocket.accept"})
        viewer = Viewer(send=send)
        viewer.queue.put_nowait(orjson.dumps(self.snapshot()).decode())
        self.viewers.add(viewer)
        viewer.writer = asyncio.create_task(self._write(viewer))
        try:
            # Viewers have nothing to say; this notices them leaving.
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            self.viewers.discard(viewer)
            writer = viewer.writer
            if writer is not None and not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    async def _write(self, viewer: Viewer) -> None:
        try:
            while True:
                text = await viewer.queue.get()
                if viewer.resync:
                    viewer.resync = False
                    text = orjson.dumps(self.snapshot()).decode()
                if not text:
                    continue
                message = {"type": "websocket.send", "text": text}
                await asyncio.wait_for(viewer.send(message), self.send_timeout)
        except Exception:
            # Its send buffer is stuck (timeout) or the socket is gone: stop feeding it. The
            # server's keep-alive pings close a connection whose reader stopped answering.
            self.viewers.discard(viewer)

    async def close_viewers(self) -> None:
        viewers, self.viewers = list(self.viewers), set()

        async def close(viewer: Viewer) -> None:
            if viewer.writer is not None:
                viewer.writer.cancel()
            with contextlib.suppress(Exception):
                message = {
                    "type": "websocket.close",
                    "code": GOING_AWAY,
                    "reason": "server shutdown",
                }
                await asyncio.wait_for(viewer.send(message), 1.0)

        await asyncio.gather(*(close(v) for v in viewers))
