"""The request queue under a burst: ``python -m benchmarks.queue [--quick] [--json PATH]``.
See docs/benchmarks.md, "Request queue (200 clients)".

Why: with ``[queuing] enabled = true``, a request that finds every capable backend at
capacity (``max_concurrent``) waits in Nexus, by priority and first come first served, and is
sent the moment a slot frees; with the queue off Nexus sends it anyway to the least-loaded
backend, which queues it itself or refuses it. This measures what that changes for clients
and backends, and checks that the queue costs nothing when no backend is busy.

1. **Burst**: 200 clients (``--quick``: 40) each send one non-streamed chat completion at the
   same moment, through Nexus, to two backends of 2 slots each (``max_concurrent = 2`` on
   both), with the queue on (``max_queue_size = 500``, ``default_timeout_seconds = 60``) and
   off. Each backend is a real aiohttp server on 127.0.0.1 serving at most 2 requests at once
   for a fixed service time, in two flavours: *llama.cpp-like* (requests beyond the slots
   wait inside the backend, FIFO, unbounded) and *Ollama-like* (4 may wait, like
   ``OLLAMA_MAX_QUEUE``; more get HTTP 503 at once). Per run: errors by status and
   ``error.code``, latency of the answered requests (p50, p95, p99, max), wall time (first
   request sent to last answer received), slot utilisation (busy slot-seconds measured
   inside the backends / (4 slots x wall time)), the peak number of requests in flight at
   each backend (accepted, not yet answered: in a slot or in its own queue), how many answers
   carried ``X-Nexus-Queue-Wait-Ms`` and their median wait, and the CPU time of this whole
   process (client, Nexus and backends). Each (flavour, mode) runs ``rounds`` times with a
   fresh Nexus and fresh backends, on and off alternating; latencies are pooled.
2. **No busy backend**: two backends with 64 slots (``max_concurrent = 64``) and no service
   time, one sequential client on one keep-alive connection per target, interleaved in
   rotating order: direct to a backend, through Nexus with the queue on, through Nexus with
   it off. Added latency = p50 through Nexus - p50 direct, in the same run; the ratio on/off
   should be 1 within noise.

Nexus runs in this process, built as ``nexus serve`` builds it (TOML file -> ``config.load``
-> ``Server``, tests/helpers.py ``running_nexus``; discovery off, ``max_concurrent_requests =
1000``, ``routing.max_retries`` default, JSON request log at info to a file), on uvloop as
``nexus serve`` runs. The client is aiohttp (one ``ClientSession``, a connection per client).
Everything binds 127.0.0.1; every wait has a timeout; servers stop whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import uvloop
from aiohttp import web
from tests.helpers import Nexus, running_nexus, wait_until

from benchmarks.common import base_meta, log, nexus_log_summary
from benchmarks.procs import HOST, ROOT
from benchmarks.report import pct
from nexus import logs
from nexus.config import LoggingConfig

RESULTS_DIR = ROOT / "benchmarks" / "results"
MODEL = "bench-model"
MODES = ("on", "off")
FLAVOURS: dict[str, int | None] = {"llama.cpp-like": None, "Ollama-like": 4}  # own queue depth
QUEUE_MAX_SIZE = 500
QUEUE_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = QUEUE_TIMEOUT_S + 30  # one burst request, the queue's whole wait included
BURST_TIMEOUT_S = CLIENT_TIMEOUT_S + 30
IDLE_REQUEST_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 10.0
WARMUP_REQUESTS = 4  # sequential, through Nexus, before each burst (connections, first use)
OLLAMA_BUSY = "server busy, please try again.  maximum pending requests exceeded"
JSON_HEADERS = {"Content-Type": "application/json"}
CHAT_BODY = orjson.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 4}
)


@dataclass(frozen=True)
class Settings:
    clients: int
    service_s: float
    rounds: int  # bursts per (flavour, mode)
    idle_rounds: int
    idle_per_round: int  # sequential requests per target per round
    slots: int = 2
    idle_slots: int = 64

    @classmethod
    def full(cls) -> Settings:
        return cls(clients=200, service_s=0.05, rounds=3, idle_rounds=10, idle_per_round=300)

    @classmethod
    def quick(cls) -> Settings:
        return cls(clients=40, service_s=0.02, rounds=1, idle_rounds=3, idle_per_round=100)


# -- the backend --------------------------------------------------------------------------


@dataclass
class SlotStats:
    served: int = 0
    rejected: int = 0  # 503 "server busy" (Ollama-like, its own queue full)
    busy_seconds: float = 0.0  # slot-seconds: the sum of every request's time in a slot
    in_flight: int = 0  # accepted and not answered yet: in a slot or in the backend's queue
    peak_in_flight: int = 0
    peak_slots_busy: int = 0


class SlotBackend:
    """An OpenAI-compatible server with ``slots`` slots and a service time: what a local
    inference server looks like from a gateway. ``queue_limit`` None: requests beyond the
    slots wait inside, FIFO, without bound (llama.cpp); a number: that many may wait, the next
    gets 503 at once (Ollama with ``OLLAMA_MAX_QUEUE``)."""

    def __init__(self, name: str, slots: int, queue_limit: int | None, service_s: float) -> None:
        self.name = name
        self.capacity = slots
        self.queue_limit = queue_limit
        self.service_s = service_s
        self.stats = SlotStats()
        self.busy = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, HOST, 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.url = f"http://{HOST}:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            async with asyncio.timeout(10):
                await runner.cleanup()

    def reset(self) -> None:
        self.stats = SlotStats()

    async def _models(self, request: web.Request) -> web.Response:
        entry = {"id": MODEL, "object": "model", "owned_by": "vllm", "max_model_len": 4096}
        return json_response({"object": "list", "data": [entry]})

    async def _chat(self, request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        if self.queue_full():
            self.stats.rejected += 1
            return json_response({"error": OLLAMA_BUSY}, status=503)
        stats = self.stats
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            await self._serve()
            stats.served += 1
            return json_response(completion(str(payload.get("model", MODEL))))
        finally:
            stats.in_flight -= 1

    def queue_full(self) -> bool:
        """Every slot taken and as many waiting as the backend's own queue holds."""
        limit = self.queue_limit
        return limit is not None and self.busy >= self.capacity and len(self.waiters) >= limit

    async def _serve(self) -> None:
        """Wait for a slot, hold it for the service time, free it (to the next in line)."""
        await self._take_slot()
        self.stats.peak_slots_busy = max(self.stats.peak_slots_busy, self.busy)
        started = time.perf_counter()
        try:
            if self.service_s > 0:
                await asyncio.sleep(self.service_s)
        finally:
            self.stats.busy_seconds += time.perf_counter() - started
            self._free_slot()

    async def _take_slot(self) -> None:
        if self.busy < self.capacity and not self.waiters:
            self.busy += 1
            return
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(ticket)
        try:
            await ticket  # resolved by _free_slot: the slot is handed over, busy unchanged
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self._free_slot()
            else:
                self.waiters.remove(ticket)
            raise

    def _free_slot(self) -> None:
        while self.waiters:
            ticket = self.waiters.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return
        self.busy -= 1


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }


@contextlib.asynccontextmanager
async def backends(
    count: int, slots: int, queue_limit: int | None, service_s: float
) -> AsyncIterator[list[SlotBackend]]:
    started: list[SlotBackend] = []
    try:
        for index in range(count):
            backend = SlotBackend(f"backend-{'ab'[index]}", slots, queue_limit, service_s)
            await backend.start()
            started.append(backend)
        yield started
    finally:
        for backend in started:
            await backend.stop()


# -- Nexus --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def nexus_in_front(
    servers: Sequence[SlotBackend], *, queue: bool, capacity: int, tmp: Path
) -> AsyncIterator[Nexus]:
    """Nexus as ``nexus serve`` builds it, in front of ``servers``; returns once both are
    routable with the model."""
    entries = [
        {"name": s.name, "url": s.url, "type": "vllm", "max_concurrent": capacity} for s in servers
    ]
    sections: dict[str, Any] = {
        "server": {"max_concurrent_requests": 1000, "request_timeout_seconds": 120},
        "queuing": {
            "enabled": queue,
            "max_queue_size": QUEUE_MAX_SIZE,
            "default_timeout_seconds": QUEUE_TIMEOUT_S,
        },
    }
    tmp.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before the servers start)
    async with running_nexus(tmp, entries, **sections) as gateway:
        await wait_until(
            lambda: all(b.routable and MODEL in b.models for b in gateway.state.registry),
            timeout=SETTLE_TIMEOUT_S,
            interval=0.02,
            what="both backends routable",
        )
        yield gateway


# -- the client ---------------------------------------------------------------------------


@dataclass
class Outcome:
    started: float
    ended: float
    status: int  # 0: no HTTP answer (the exception's name is the code)
    code: str  # error.code of an error answer ("" for a 200)
    wait_ms: float | None  # X-Nexus-Queue-Wait-Ms
    backend: str  # X-Nexus-Backend

    @property
    def latency_s(self) -> float:
        return self.ended - self.started


async def one_request(session: aiohttp.ClientSession, url: str) -> Outcome:
    started = time.perf_counter()
    try:
        async with session.post(url, data=CHAT_BODY, headers=JSON_HEADERS) as resp:
            raw = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(started, time.perf_counter(), 0, type(exc).__name__, None, "")
    ended = time.perf_counter()
    wait = resp.headers.get("X-Nexus-Queue-Wait-Ms")
    return Outcome(
        started,
        ended,
        resp.status,
        "" if resp.status == 200 else error_code(raw),
        float(wait) if wait is not None else None,
        resp.headers.get("X-Nexus-Backend", ""),
    )


def error_code(raw: bytes) -> str:
    try:
        error = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return "not-json"
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type") or "?")
    return "?"


def client_session(connections: int, timeout: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout))


# -- 1. the burst -------------------------------------------------------------------------


@dataclass
class BurstRun:
    outcomes: list[Outcome]
    wall_s: float
    cpu_s: float
    backends: dict[str, SlotStats]
    utilisation: float


async def burst(url: str, clients: int) -> tuple[list[Outcome], float]:
    """``clients`` requests at once, each on its own connection; (outcomes, wall seconds)."""
    async with client_session(clients, CLIENT_TIMEOUT_S) as session:
        async with asyncio.timeout(BURST_TIMEOUT_S):
            outcomes = await asyncio.gather(*(one_request(session, url) for _ in range(clients)))
    wall = max(o.ended for o in outcomes) - min(o.started for o in outcomes)
    return list(outcomes), wall


async def warm_up(url: str) -> None:
    async with client_session(1, IDLE_REQUEST_TIMEOUT_S) as session:
        for _ in range(WARMUP_REQUESTS):
            outcome = await one_request(session, url)
            if outcome.status != 200:
                raise RuntimeError(f"warm-up request failed: {outcome}")


async def burst_run(cfg: Settings, queue_limit: int | None, queue: bool, tmp: Path) -> BurstRun:
    """One burst through a fresh Nexus in front of fresh backends."""
    async with (
        backends(2, cfg.slots, queue_limit, cfg.service_s) as servers,
        nexus_in_front(servers, queue=queue, capacity=cfg.slots, tmp=tmp) as gateway,
    ):
        url = gateway.url + "/v1/chat/completions"
        await warm_up(url)
        for server in servers:
            server.reset()
        cpu = time.process_time()
        outcomes, wall = await burst(url, cfg.clients)
        cpu = time.process_time() - cpu
        busy = sum(s.stats.busy_seconds for s in servers)
        slots = cfg.slots * len(servers)
        return BurstRun(
            outcomes, wall, cpu, {s.name: s.stats for s in servers}, busy / (slots * wall)
        )


def errors_of(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts = Counter(f"{o.status} {o.code}" for o in outcomes if o.status != 200)
    return dict(counts.most_common())


def latency_ms(samples: Sequence[float]) -> dict[str, float | None]:
    ms = [s * 1000 for s in samples]
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p95": pct(ms, 95),
        "p99": pct(ms, 99),
        "max": max(ms) if ms else None,
    }


def burst_summary(runs: Sequence[BurstRun]) -> dict[str, Any]:
    """The rounds of one (flavour, mode): latencies and errors pooled, the rest per round."""
    outcomes = [o for run in runs for o in run.outcomes]
    answered = [o for o in outcomes if o.status == 200]
    waits = [o.wait_ms for o in answered if o.wait_ms is not None]
    names = sorted(runs[0].backends)
    return {
        "requests": len(outcomes),
        "answered": len(answered),
        "errors": errors_of(outcomes),
        "latency_ms": latency_ms([o.latency_s for o in answered]),
        "latency_ms_all": latency_ms([o.latency_s for o in outcomes]),
        "wall_ms": [run.wall_s * 1000 for run in runs],
        "utilisation": [run.utilisation for run in runs],
        "cpu_s": [run.cpu_s for run in runs],
        "peak_in_flight": {n: max(r.backends[n].peak_in_flight for r in runs) for n in names},
        "peak_slots_busy": {n: max(r.backends[n].peak_slots_busy for r in runs) for n in names},
        "served": {n: sum(r.backends[n].served for r in runs) for n in names},
        "backend_503s": sum(s.rejected for r in runs for s in r.backends.values()),
        "queue_wait_header": {
            "answers": len(waits),
            "median_ms": statistics.median(waits) if waits else None,
        },
        "answered_by": dict(Counter(o.backend for o in answered).most_common()),
    }


async def bursts(cfg: Settings, tmp: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    number = itertools.count()
    for flavour, queue_limit in FLAVOURS.items():
        runs: dict[str, list[BurstRun]] = {mode: [] for mode in MODES}
        for index in range(cfg.rounds):
            order = MODES if index % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                where = tmp / f"burst-{next(number)}"
                run = await burst_run(cfg, queue_limit, mode == "on", where)
                runs[mode].append(run)
                log(progress(flavour, mode, run))
        results[flavour] = {mode: burst_summary(runs[mode]) for mode in MODES}
    return results


def progress(flavour: str, mode: str, run: BurstRun) -> str:
    ok = [o.latency_s * 1000 for o in run.outcomes if o.status == 200]
    peaks = "/".join(str(s.peak_in_flight) for s in run.backends.values())
    return (
        f"  {flavour:<15} queue {mode:<3}: {len(ok)} answered, errors {errors_of(run.outcomes)}, "
        f"p50 {fmt(pct(ok, 50))} ms, p99 {fmt(pct(ok, 99))} ms, wall {run.wall_s * 1000:.0f} ms, "
        f"utilisation {run.utilisation:.2f}, peak in flight {peaks}"
    )


# -- 2. no busy backend -------------------------------------------------------------------


async def timed(session: aiohttp.ClientSession, url: str) -> Outcome:
    async with asyncio.timeout(IDLE_REQUEST_TIMEOUT_S):
        outcome = await one_request(session, url)
    if outcome.status != 200:
        raise RuntimeError(f"request to {url} failed: {outcome}")
    return outcome


async def idle_rounds(cfg: Settings, urls: dict[str, str]) -> dict[str, list[Outcome]]:
    """Sequential requests, one keep-alive connection per target, targets interleaved in
    rotating order (``idle_per_round`` each per round), after a warm-up of as many."""
    samples: dict[str, list[Outcome]] = {name: [] for name in urls}
    names = list(urls)
    async with contextlib.AsyncExitStack() as stack:
        sessions = {
            n: await stack.enter_async_context(client_session(1, IDLE_REQUEST_TIMEOUT_S))
            for n in names
        }
        for name in names:
            for _ in range(cfg.idle_per_round):
                await timed(sessions[name], urls[name])
        for index in range(cfg.idle_rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for _ in range(cfg.idle_per_round):
                for name in order:
                    samples[name].append(await timed(sessions[name], urls[name]))
    return samples


def added_us(samples: dict[str, list[Outcome]], q: float) -> dict[str, float | None]:
    values = {n: pct([o.latency_s * 1e6 for o in s], q) for n, s in samples.items()}
    direct = values["direct"]
    return {
        mode: None if v is None or direct is None else v - direct
        for mode, v in values.items()
        if mode != "direct"
    }


def per_round_ratios(samples: dict[str, list[Outcome]], rounds: int) -> list[float]:
    """The on/off ratio of added p50 latency, computed within each round."""
    size = len(samples["direct"]) // rounds
    ratios = []
    for index in range(rounds):
        part = {n: s[index * size : (index + 1) * size] for n, s in samples.items()}
        added = added_us(part, 50)
        on, off = added["on"], added["off"]
        if on is not None and off is not None and off > 0:
            ratios.append(on / off)
    return ratios


async def no_busy(cfg: Settings, tmp: Path) -> dict[str, Any]:
    async with (
        backends(2, cfg.idle_slots, None, 0.0) as servers,
        nexus_in_front(servers, queue=True, capacity=cfg.idle_slots, tmp=tmp / "idle-on") as on,
        nexus_in_front(servers, queue=False, capacity=cfg.idle_slots, tmp=tmp / "idle-off") as off,
    ):
        path = "/v1/chat/completions"
        urls = {"direct": servers[0].url + path, "on": on.url + path, "off": off.url + path}
        samples = await idle_rounds(cfg, urls)
        peaks = [s.stats.peak_in_flight for s in servers]
    p50, p90 = added_us(samples, 50), added_us(samples, 90)
    ratios = per_round_ratios(samples, cfg.idle_rounds)
    return {
        "requests_per_target": len(samples["direct"]),
        "p50_us": {n: pct([o.latency_s * 1e6 for o in s], 50) for n, s in samples.items()},
        "added_p50_us": p50,
        "added_p90_us": p90,
        "ratio_on_off_p50": ratio(p50["on"], p50["off"]),
        "ratio_on_off_p90": ratio(p90["on"], p90["off"]),
        "per_round_ratio_p50": ratios,
        "queue_wait_headers": sum(o.wait_ms is not None for o in samples["on"]),
        "peak_in_flight": peaks,
    }


# -- report -------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def errors_cell(errors: dict[str, int]) -> str:
    return ", ".join(f"{count} x {what}" for what, count in errors.items()) or "0"


def slashed(per_backend: dict[str, int]) -> str:
    return "/".join(str(v) for v in per_backend.values())


def burst_rows(modes: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    def row(label: str, cell: Any) -> tuple[str, str, str]:
        return (label, cell(modes["on"]), cell(modes["off"]))

    def lat(key: str) -> Any:
        return lambda m: fmt(m["latency_ms"][key])

    return [
        row("answered", lambda m: f"{m['answered']} of {m['requests']}"),
        row("errors", lambda m: errors_cell(m["errors"])),
        row("latency p50 (ms)", lat("p50")),
        row("latency p95 (ms)", lat("p95")),
        row("latency p99 (ms)", lat("p99")),
        row("latency max (ms)", lat("max")),
        row("wall time (ms, median)", lambda m: fmt(median(m["wall_ms"]))),
        row("slot utilisation (median)", lambda m: fmt(median(m["utilisation"]), ".2f")),
        row("peak in flight per backend", lambda m: slashed(m["peak_in_flight"])),
        row("backend 503s", lambda m: str(m["backend_503s"])),
        row("with X-Nexus-Queue-Wait-Ms", lambda m: str(m["queue_wait_header"]["answers"])),
        row("median queue wait (ms)", lambda m: fmt(m["queue_wait_header"]["median_ms"])),
        row("CPU, whole process (s, median)", lambda m: fmt(median(m["cpu_s"]), ".2f")),
    ]


def table(results: dict[str, Any]) -> str:
    cfg = results["meta"]["settings"]
    lines = [
        f"\n{cfg['clients']} clients at once, 2 backends x {cfg['slots']} slots, "
        f"service {cfg['service_s'] * 1000:.0f} ms, {cfg['rounds']} round(s) per mode"
    ]
    for flavour, modes in results["burst"].items():
        lines.append(f"\n{flavour:<30}{'queue on':>24}{'queue off':>24}")
        lines += [f"{a:<30}{b:>24}{c:>24}" for a, b, c in burst_rows(modes)]
    idle = results["no_busy"]
    p50, p90 = idle["added_p50_us"], idle["added_p90_us"]
    per_round = idle["per_round_ratio_p50"]
    lines += [
        f"\nno busy backend ({idle['requests_per_target']} sequential requests per target): "
        f"added p50 on {fmt(p50['on'])} us, off {fmt(p50['off'])} us, "
        f"ratio on/off {fmt(idle['ratio_on_off_p50'], '.2f')} "
        f"(per round {fmt(min(per_round, default=None), '.2f')}-"
        f"{fmt(max(per_round, default=None), '.2f')}); "
        f"added p90 on {fmt(p90['on'])} us, off {fmt(p90['off'])} us"
    ]
    return "\n".join(lines)


def meta(args: argparse.Namespace, cfg: Settings) -> dict[str, Any]:
    return {
        **base_meta("benchmarks.queue"),
        "client": "aiohttp ClientSession, one connection per client",
        "quick": args.quick,
        "settings": asdict(cfg),
        "queuing_on": {
            "max_queue_size": QUEUE_MAX_SIZE,
            "default_timeout_seconds": QUEUE_TIMEOUT_S,
        },
        "ollama_like_queue": FLAVOURS["Ollama-like"],
    }


async def measure(args: argparse.Namespace, tmp: Path, log_file: IO[str]) -> dict[str, Any]:
    cfg = Settings.quick() if args.quick else Settings.full()
    logs.setup(LoggingConfig(level="info", format="json"), log_file)
    results: dict[str, Any] = {"meta": meta(args, cfg)}
    log(f"burst: {cfg.clients} clients, queue on and off ...")
    results["burst"] = await bursts(cfg, tmp)
    log("no busy backend: sequential, direct / queue on / queue off ...")
    results["no_busy"] = await no_busy(cfg, tmp)
    results["meta"]["loadavg_end"] = os.getloadavg()
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.queue", description=__doc__)
    p.add_argument("--quick", action="store_true", help="40 clients, one round (smoke run)")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="write the results here (default: benchmarks/results/queue-DATE.json)",
    )
    return p.parse_args(argv)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.json) if args.json else RESULTS_DIR / f"queue-{stamp}.json"
    with tempfile.TemporaryDirectory(prefix="nexus-queue-bench-") as name:
        tmp = Path(name)
        with open(tmp / "nexus.log", "w") as log_file:
            try:
                results = uvloop.run(measure(args, tmp, log_file))
            except KeyboardInterrupt:
                log("benchmarks.queue: interrupted; servers stopped")
                return 130
            finally:
                logs.flush()
        results["meta"]["nexus_log"] = nexus_log_summary(tmp / "nexus.log")
    print(table(results))
    write_json(out, results)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
