"""What multi-tenant auth and per-tenant rate limits cost on the request path:
``python -m benchmarks.tenants [--quick] [--json PATH]``. See docs/benchmarks.md, "Tenants:
auth and rate limits".

Why: with ``[auth] enabled = true`` every API request carries a key; ``Tenants.authenticate``
finds its tenant in memory (the key's id looked up, its SHA-256 compared in constant time),
and once the model is known ``Tenants.admit`` checks the tenant's models, monthly quota and
rate limit (token buckets for requests and tokens per minute): in this process with the
embedded SQLite store, in one Lua script on Redis with ``[storage] url``. The target (issue
21): auth and limit checks together under 20 µs per request in process; one round trip in the
Redis mode. This measures:

1. **The checks alone, in process**: a real ``SQLiteStore`` in a temporary directory, a
   ``Tenants`` on it with a ``LocalLimiter`` (as ``nexus serve`` builds it without
   ``[storage] url``), a tenant with rpm/tpm limits large enough never to refuse, its key made
   by ``Tenants.create_key``; ``authenticate(scope)`` (an ASGI scope with the headers an
   aiohttp client sends, the key in ``Authorization: Bearer``) + ``await admit(tenant, model,
   model)``: nanoseconds per call, median of batches timed with ``time.perf_counter_ns``.
   Also each half alone, the pair with a monthly quota as well (every check on), and the pair
   plus the ``x-ratelimit-*`` headers the answer carries (``Decision.headers``). The Redis
   mode against a real ``redis-server`` (tests/redis_server.py, on a free loopback port,
   ``appendfsync everysec``): ``RedisLimiter.acquire``, authenticate + admit with it, and the
   ``spend_tokens`` a request with a known usage sends after its answer (awaited here, to time
   it), per call (wall and this process' CPU), against a bare ``PING`` on the same client
   (one round trip, nothing else), batches interleaved; Redis' own ``INFO commandstats``
   counts the commands one ``acquire`` runs (the one it was sent, ``EVALSHA``, and those the
   script runs inside Redis). One more row: ``acquire`` with ``appendfsync always`` (the
   setting of the test helper, where every write waits for the disk).
2. **End to end**: a vLLM fake (tests/fakes) answering at once; one sequential client per
   target on a keep-alive connection: direct to the fake; Nexus with auth off; Nexus with
   auth on and the SQLite store; Nexus with auth on and Redis (``[storage] url``); and
   ``redis-rpm``, the same Redis Nexus with a second tenant limited in requests per minute
   only (no tpm: nothing is sent to Redis after the answer). Tenants are created through the
   ``Tenants`` API after start (what ``POST /admin/tenants`` and ``/admin/keys`` do), with
   the same large limits. Every target gets the same request bytes (a key of the same shape
   in ``Authorization``). Added latency =
   Nexus p50 - direct p50, pooled and per round, and the on-off differences; CPU per request
   of this process (client, fake and every Nexus: the client's and the fake's share is the
   same for every target, so target minus direct is Nexus' own), and redis-server's CPU per
   request of the Redis target (``/proc/PID/stat``); the Redis commands each request sent
   (``INFO commandstats`` around the Redis target's blocks).

Nexus runs in this process, built as ``nexus serve`` builds it (TOML file -> ``config.load``
-> ``Server``, tests/helpers.py ``running_nexus``; discovery off, JSON request log at info to
a file), on uvloop as ``nexus serve`` runs. Rounds are interleaved: in each, every target
serves a block of sequential requests (or every in-process operation a batch), in an order
that rotates from round to round; ``time.process_time()`` around a block is its CPU. The
client is aiohttp (a ``ClientSession`` with one keep-alive connection per target).
Everything binds 127.0.0.1, every wait has a timeout, and every server is stopped whatever
happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import uvloop
from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import Nexus, running_nexus, wait_until
from tests.redis_server import RedisServer, redis_server

from benchmarks import procs
from benchmarks.common import base_meta, log, nexus_log_summary
from benchmarks.procs import ROOT
from benchmarks.report import pct
from nexus import logs
from nexus.asgi import Scope
from nexus.config import AuthConfig, LoggingConfig
from nexus.store.redis import RedisStore
from nexus.store.redis_limits import RedisLimiter
from nexus.store.resp import Client
from nexus.store.sqlite import SQLiteStore
from nexus.tenants.limits import LocalLimiter
from nexus.tenants.model import Tenant
from nexus.tenants.service import Tenants

RESULTS_DIR = ROOT / "benchmarks" / "results"
MODEL = "bench-local"
TENANT = "bench"
BIG_RPM = 1_000_000_000  # requests per minute: never refused
BIG_TPM = 1_000_000_000_000  # tokens per minute
BIG_MONTHLY_TOKENS = 1_000_000_000_000
BIG_MONTHLY_COST = 1_000_000.0
LIMITS = {"rpm": BIG_RPM, "tpm": BIG_TPM}
REQUEST_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 15.0
TARGET_CHECKS_US = 20.0
# Auth off; auth on with the SQLite store; on with Redis; the same Redis Nexus with a tenant
# limited in requests only (no tokens per minute: no token spend sent after the answer).
NEXUS_TARGETS = ("off", "sqlite", "redis", "redis-rpm")
TARGETS = ("direct", *NEXUS_TARGETS)
REDIS_TARGETS = ("redis", "redis-rpm")
PAIRS = {
    "sqlite - off": ("sqlite", "off"),
    "redis - off": ("redis", "off"),
    "redis - sqlite": ("redis", "sqlite"),
    "redis-rpm - sqlite": ("redis-rpm", "sqlite"),
    "redis - redis-rpm": ("redis", "redis-rpm"),
}


@dataclass(frozen=True)
class Settings:
    rounds: int
    per_round: int  # sequential requests per target per round (one block)
    warmup: int  # per target, before the rounds
    micro_batches: int  # in-process batches per operation
    micro_n: int  # calls per batch, in-process checks
    redis_batches: int
    redis_n: int  # calls per batch, Redis round trips
    fsync_n: int  # acquire calls with appendfsync always

    @classmethod
    def full(cls) -> Settings:
        return cls(
            rounds=40,
            per_round=150,
            warmup=300,
            micro_batches=15,
            micro_n=20_000,
            redis_batches=15,
            redis_n=1_000,
            fsync_n=300,
        )

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            rounds=6,
            per_round=100,
            warmup=100,
            micro_batches=5,
            micro_n=3_000,
            redis_batches=5,
            redis_n=300,
            fsync_n=100,
        )


def scope_for(key: str) -> Scope:
    """An ASGI scope as uvicorn hands it over for an aiohttp client's chat request, the key
    last (``presented_key`` scans every header before it)."""
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "client": ("127.0.0.1", 40000),
        "headers": [
            (b"host", b"127.0.0.1:4000"),
            (b"user-agent", b"Python/3.12 aiohttp/3.12"),
            (b"accept", b"*/*"),
            (b"accept-encoding", b"gzip, deflate"),
            (b"content-type", b"application/json"),
            (b"content-length", b"98"),
            (b"authorization", f"Bearer {key}".encode()),
        ],
    }


async def with_tenant(tenants: Tenants, name: str, **fields: Any) -> tuple[Tenant, str]:
    """A tenant and a key of it, made as ``POST /admin/tenants`` and ``/admin/keys`` do."""
    tenant = await tenants.create({"name": name, **fields})
    key, _ = await tenants.create_key(name, None)
    return tenant, key


Op = Callable[[int], Awaitable[None]]  # n calls


def checks_ops(tenants: Tenants, scope: Scope, quota_scope: Scope) -> dict[str, Op]:
    """The in-process operations, each as a loop of n calls (the loop's own cost is the
    ``empty loop`` row)."""
    authenticate, admit = tenants.authenticate, tenants.admit

    async def empty(n: int) -> None:
        for _ in range(n):
            pass

    async def auth_only(n: int) -> None:
        for _ in range(n):
            authenticate(scope)

    tenant = tenants.authenticate(scope)

    async def admit_only(n: int) -> None:
        for _ in range(n):
            await admit(tenant, MODEL, MODEL)

    async def both(n: int) -> None:
        for _ in range(n):
            await admit(authenticate(scope), MODEL, MODEL)

    async def both_quota(n: int) -> None:
        for _ in range(n):
            await admit(authenticate(quota_scope), MODEL, MODEL)

    async def both_headers(n: int) -> None:
        for _ in range(n):
            (await admit(authenticate(scope), MODEL, MODEL)).headers()

    return {
        "empty loop": empty,
        "authenticate": auth_only,
        "admit (rpm + tpm)": admit_only,
        "authenticate + admit": both,
        "authenticate + admit, with a monthly quota": both_quota,
        "authenticate + admit + x-ratelimit headers": both_headers,
    }


async def batches(ops: Mapping[str, Op], count: int, n: int) -> dict[str, list[float]]:
    """``count`` rounds; in each, every operation runs one batch of ``n`` calls, in an order
    rotating from round to round. Nanoseconds per call of each batch."""
    names = list(ops)
    out: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        await ops[name](max(1, n // 10))
    for index in range(count):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter_ns()
            await ops[name](n)
            out[name].append((time.perf_counter_ns() - started) / n)
        await asyncio.sleep(0)  # the store's poll task may run between batches
    return out


def per_call(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "batches": len(values),
    }


async def in_process_sqlite(cfg: Settings, tmp: Path) -> dict[str, Any]:
    where = tmp / "micro-sqlite"
    where.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(where / "nexus.db")
    await store.open()
    tenants = Tenants(AuthConfig(enabled=True), store, flush_seconds=1.0, cycle_day=1)
    try:
        await tenants.start()
        assert isinstance(tenants.limiter, LocalLimiter)
        _, key = await with_tenant(tenants, TENANT, **LIMITS)
        quota = {"monthly_tokens": BIG_MONTHLY_TOKENS, "monthly_cost": BIG_MONTHLY_COST}
        _, quota_key = await with_tenant(tenants, "bench-quota", **LIMITS, **quota)
        ops = checks_ops(tenants, scope_for(key), scope_for(quota_key))
        ns = await batches(ops, cfg.micro_batches, cfg.micro_n)
        decision = await tenants.admit(tenants.authenticate(scope_for(key)), MODEL, MODEL)
    finally:
        await tenants.stop()
        await store.close()
    out = {name: per_call(values) for name, values in ns.items()}
    loop_ns = out["empty loop"]["median"]
    both = out["authenticate + admit"]["median"]
    return {
        "ns_per_call": out,
        "calls_per_batch": cfg.micro_n,
        "checks_us": both / 1000,
        "checks_minus_loop_us": (both - loop_ns) / 1000,
        "checks_with_quota_us": out["authenticate + admit, with a monthly quota"]["median"] / 1000,
        "checks_with_headers_us": out["authenticate + admit + x-ratelimit headers"]["median"]
        / 1000,
        "target_us": TARGET_CHECKS_US,
        "meets_target": both / 1000 < TARGET_CHECKS_US,
        "limiter": type(tenants.limiter).__name__,
        "decision": {
            "allowed": decision.allowed,
            "headers": {k.decode(): v.decode() for k, v in decision.headers()},
        },
    }


class Admin:
    """The benchmark's own connection to Redis (Nexus' client): INFO, CONFIG SET, FLUSHALL."""

    def __init__(self, url: str) -> None:
        self.client = Client(url, 5)

    async def info(self, section: str) -> dict[str, Any]:
        """``INFO section`` as {key: value}, a "k=v,k=v" value as a dict of numbers."""
        text = (await self.client.command("INFO", section)).decode()
        out: dict[str, Any] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if not sep or line.startswith("#"):
                continue
            if "=" in value:
                pairs = (item.split("=", 1) for item in value.split(","))
                out[key] = {k: float(v) for k, v in pairs if v.replace(".", "", 1).isdigit()}
            else:
                out[key] = value
        return out

    async def config_set(self, name: str, value: str) -> None:
        await self.client.command("CONFIG", "SET", name, value)

    async def flushall(self) -> None:
        await self.client.command("FLUSHALL")

    async def aclose(self) -> None:
        await self.client.close()


async def command_calls(admin: Admin) -> Counter[str]:
    """Redis' own count of the commands it has run, by command (``INFO commandstats``)."""
    info = await admin.info("commandstats")
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in info.items()
            if isinstance(stats, dict)
        }
    )


def delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    out = Counter({k: after[k] - before.get(k, 0) for k in after})
    out.pop("info", None)  # our own INFO
    return +out


async def timed_calls(fn: Callable[[], Awaitable[Any]], n: int) -> tuple[list[float], float]:
    """µs of each of ``n`` sequential calls, and this process' CPU µs per call."""
    out = []
    cpu = time.process_time()
    for _ in range(n):
        started = time.perf_counter_ns()
        await fn()
        out.append((time.perf_counter_ns() - started) / 1000)
    return out, (time.process_time() - cpu) / n * 1e6


def latency_summary(
    samples: Sequence[float], batch_means: Sequence[float], cpu: Sequence[float]
) -> dict[str, Any]:
    return {
        "n": len(samples),
        "p50_us": pct(samples, 50),
        "p90_us": pct(samples, 90),
        "p99_us": pct(samples, 99),
        "batch_mean_us": spread(batch_means),
        "cpu_us_per_call": spread(cpu),
    }


async def in_process_redis(cfg: Settings, server: RedisServer, admin: Admin) -> dict[str, Any]:
    store = RedisStore(server.url)
    await store.open()
    limiter = RedisLimiter(store)
    tenants = Tenants(
        AuthConfig(enabled=True), store, flush_seconds=1.0, cycle_day=1, limiter=limiter
    )
    try:
        await tenants.start()
        tenant, key = await with_tenant(tenants, TENANT, **LIMITS)
        scope = scope_for(key)
        client = store.client

        async def both() -> None:
            await tenants.admit(tenants.authenticate(scope), MODEL, MODEL)

        async def acquire() -> None:
            decision = await limiter.acquire(tenant)
            assert decision.allowed

        async def spend() -> None:
            # What a request with a known usage sends after its answer (not awaited by the
            # request): here awaited, to time its round trip.
            limiter.spend_tokens(tenant, 10)
            await asyncio.gather(*limiter._sending)

        ops: dict[str, Callable[[], Awaitable[Any]]] = {
            "PING": lambda: client.command("PING"),
            "RedisLimiter.acquire": acquire,
            "authenticate + admit (Redis)": both,
            "spend_tokens (after the answer)": spend,
        }
        for fn in ops.values():  # warm-up: the script is loaded (EVAL once, then EVALSHA)
            await timed_calls(fn, max(10, cfg.redis_n // 10))
        samples: dict[str, list[float]] = {name: [] for name in ops}
        means: dict[str, list[float]] = {name: [] for name in ops}
        cpus: dict[str, list[float]] = {name: [] for name in ops}
        names = list(ops)
        for index in range(cfg.redis_batches):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                got, cpu = await timed_calls(ops[name], cfg.redis_n)
                samples[name] += got
                means[name].append(statistics.fmean(got))
                cpus[name].append(cpu)
        # What one acquire sends to Redis, counted by Redis itself.
        counted = 200
        before = await command_calls(admin)
        await timed_calls(acquire, counted)
        per_acquire = delta(await command_calls(admin), before)
        script = (await admin.info("commandstats")).get("cmdstat_evalsha", {})
        # Every write waiting for the disk (the test helper's setting).
        await admin.config_set("appendfsync", "always")
        try:
            fsync, fsync_cpu = await timed_calls(acquire, cfg.fsync_n)
        finally:
            await admin.config_set("appendfsync", "everysec")
        assert not store.down and limiter._shared(), "Redis was unreachable during the run"
    finally:
        await tenants.stop()
        await store.close()
    out: dict[str, Any] = {
        name: latency_summary(samples[name], means[name], cpus[name]) for name in names
    }
    ping, acq = out["PING"]["p50_us"], out["RedisLimiter.acquire"]["p50_us"]
    both_p50 = out["authenticate + admit (Redis)"]["p50_us"]
    return {
        "per_call": out,
        "calls_per_batch": cfg.redis_n,
        "acquire_minus_ping_p50_us": acq - ping,
        "acquire_over_ping_p50": acq / ping,
        "checks_minus_ping_p50_us": both_p50 - ping,
        "commands_per_acquire": {k: v / counted for k, v in per_acquire.items()},
        "evalsha_server_usec_per_call": script.get("usec_per_call"),
        "acquire_appendfsync_always": latency_summary(
            fsync, [statistics.fmean(fsync)], [fsync_cpu]
        ),
    }


# -- 2. end to end ------------------------------------------------------------------------


def sections(target: str, where: Path, redis_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "server": {"port": 0, "max_concurrent_requests": 1000, "request_timeout_seconds": 30},
        "logging": {"level": "info", "format": "json"},
    }
    if target == "off":
        return out
    out["auth"] = {"enabled": True}
    if target == "sqlite":
        out["storage"] = {"path": str(where / "nexus.db"), "flush_interval_seconds": 1.0}
    else:
        out["storage"] = {"url": redis_url, "flush_interval_seconds": 1.0}
    return out


async def settled(gateway: Nexus) -> None:
    def ready() -> bool:
        return any(b.routable and MODEL in b.models for b in gateway.state.registry)

    await wait_until(ready, timeout=SETTLE_TIMEOUT_S, interval=0.02, what="backend routable")


@contextlib.asynccontextmanager
async def gateways(
    fake: FakeVLLM, tmp: Path, redis_url: str
) -> AsyncIterator[tuple[dict[str, str], dict[str, str], dict[str, Nexus]]]:
    """Three Nexus instances in front of the same fake (auth off, SQLite, Redis); the base
    URL and the key of each target, and the instances."""
    entries = [{"name": "local", "url": fake.url, "type": "vllm"}]
    instances = ("off", "sqlite", "redis")
    for target in instances:
        (tmp / target).mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        nexuses: dict[str, Nexus] = {}
        for target in instances:
            where = tmp / target
            nexuses[target] = await stack.enter_async_context(
                running_nexus(where, entries, **sections(target, where, redis_url))
            )
        keys: dict[str, str] = {}
        for target, gateway in nexuses.items():
            await settled(gateway)
            tenants = gateway.state.tenants
            if target == "off":
                assert tenants is None
                continue
            assert tenants is not None
            wanted = RedisLimiter if target == "redis" else LocalLimiter
            assert isinstance(tenants.limiter, wanted), type(tenants.limiter)
            keys[target] = (await with_tenant(tenants, TENANT, **LIMITS))[1]
            if target == "redis":
                rpm_only = await with_tenant(tenants, TENANT + "-rpm", rpm=BIG_RPM)
                keys["redis-rpm"] = rpm_only[1]
        # Auth off and direct: the same bytes, a key of the same shape.
        keys["off"] = keys["direct"] = keys["sqlite"]
        urls = {"direct": fake.url, **{t: n.url for t, n in nexuses.items()}}
        urls["redis-rpm"] = nexuses["redis"].url
        yield urls, keys, nexuses


@dataclass
class Block:
    latencies_us: list[float]
    cpu_s: float
    redis_cpu_s: float = 0.0
    redis_commands: Counter[str] = field(default_factory=Counter)

    @property
    def n(self) -> int:
        return len(self.latencies_us)


@dataclass
class Seen:
    statuses: Counter[int] = field(default_factory=Counter)
    ratelimit_headers: Counter[str] = field(default_factory=Counter)


def session_for(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def chat_body() -> bytes:
    return orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 8}
    )


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str], seen: Seen
) -> float:
    """One request; its latency in µs. Anything but a 200 stops the run."""
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as resp:
        raw = await resp.read()
    elapsed = (time.perf_counter() - started) * 1e6
    if resp.status != 200:
        raise RuntimeError(f"{url}: HTTP {resp.status}: {raw[:300]!r}")
    seen.statuses[resp.status] += 1
    seen.ratelimit_headers[resp.headers.get("x-ratelimit-limit-requests", "-")] += 1
    return elapsed


async def interleaved(
    cfg: Settings,
    urls: Mapping[str, str],
    keys: Mapping[str, str],
    fake: FakeVLLM,
    server: RedisServer,
    admin: Admin,
) -> tuple[dict[str, list[Block]], dict[str, Seen]]:
    """``cfg.rounds`` rounds; in each, every target serves ``cfg.per_round`` sequential
    requests on its own keep-alive connection, in an order rotating from round to round.
    Around the Redis target's blocks, redis-server's CPU and command counts are read."""
    body = chat_body()
    names = list(urls)
    headers = {
        n: {"Content-Type": "application/json", "Authorization": f"Bearer {keys[n]}"} for n in names
    }
    blocks: dict[str, list[Block]] = {n: [] for n in names}
    seen = {n: Seen() for n in names}
    assert server.proc is not None
    redis_pid = server.proc.pid

    async def block(name: str, n: int, into: Seen) -> Block:
        redis = name in REDIS_TARGETS
        commands = await command_calls(admin) if redis else Counter[str]()
        redis_cpu = procs.cpu_seconds(redis_pid) or 0.0
        cpu = time.process_time()
        session, url, sent = sessions[name], urls[name], headers[name]
        latencies = [await post(session, url, body, sent, into) for _ in range(n)]
        cpu = time.process_time() - cpu
        out = Block(latencies, cpu, (procs.cpu_seconds(redis_pid) or 0.0) - redis_cpu)
        if redis:
            out.redis_commands = delta(await command_calls(admin), commands)
        fake.requests.clear()  # the fake keeps every request
        return out

    async with contextlib.AsyncExitStack() as stack:
        sessions = {n: await stack.enter_async_context(session_for(1)) for n in names}
        for name in names:
            await block(name, cfg.warmup, Seen())
        for index in range(cfg.rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                blocks[name].append(await block(name, cfg.per_round, seen[name]))
    return blocks, seen


def p(blocks: Sequence[Block], q: float = 50) -> float:
    value = pct([x for b in blocks for x in b.latencies_us], q)
    assert value is not None
    return value


def cpu_us(blocks: Sequence[Block]) -> float:
    return sum(b.cpu_s for b in blocks) / sum(b.n for b in blocks) * 1e6


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def compare(blocks: dict[str, list[Block]], seen: Mapping[str, Seen]) -> dict[str, Any]:
    direct = blocks["direct"]
    rounds = len(direct)
    added = {t: p(blocks[t]) - p(direct) for t in NEXUS_TARGETS}
    added90 = {t: p(blocks[t], 90) - p(direct, 90) for t in NEXUS_TARGETS}
    nexus_cpu = {t: cpu_us(blocks[t]) - cpu_us(direct) for t in NEXUS_TARGETS}
    pairs = PAIRS
    per_round: dict[str, dict[str, list[float]]] = {"added_p50_us": {}, "cpu_us": {}}
    for label, (a, b) in pairs.items():
        per_round["added_p50_us"][label] = [
            p([blocks[a][i]]) - p([blocks[b][i]]) for i in range(rounds)
        ]
        per_round["cpu_us"][label] = [
            (blocks[a][i].cpu_s / blocks[a][i].n - blocks[b][i].cpu_s / blocks[b][i].n) * 1e6
            for i in range(rounds)
        ]
    commands: dict[str, dict[str, float]] = {}
    for target in REDIS_TARGETS:
        counted: Counter[str] = Counter()
        for one in blocks[target]:
            counted += one.redis_commands
        served = sum(one.n for one in blocks[target])
        commands[target] = {k: v / served for k, v in counted.most_common()}
    return {
        "requests_per_target": sum(b.n for b in direct),
        "rounds": rounds,
        "p50_us": {n: p(b) for n, b in blocks.items()},
        "p90_us": {n: p(b, 90) for n, b in blocks.items()},
        "added_p50_us": added,
        "added_p90_us": added90,
        "cpu_us_per_request_whole_process": {n: cpu_us(b) for n, b in blocks.items()},
        "nexus_cpu_us_per_request": nexus_cpu,
        "differences": {
            label: {
                "added_p50_us": added[a] - added[b],
                "added_p90_us": added90[a] - added90[b],
                "nexus_cpu_us": nexus_cpu[a] - nexus_cpu[b],
                "per_round_added_p50_us": spread(per_round["added_p50_us"][label]),
                "per_round_cpu_us": spread(per_round["cpu_us"][label]),
            }
            for label, (a, b) in pairs.items()
        },
        "redis_server_cpu_us_per_request": {
            n: sum(b.redis_cpu_s for b in bl) / sum(b.n for b in bl) * 1e6
            for n, bl in blocks.items()
        },
        "redis_commands_per_request": commands,
        "answers": {
            n: {
                "statuses": {str(k): v for k, v in s.statuses.items()},
                "x_ratelimit_limit_requests": dict(s.ratelimit_headers),
            }
            for n, s in seen.items()
        },
    }


async def end_to_end(cfg: Settings, tmp: Path, server: RedisServer, admin: Admin) -> dict[str, Any]:
    fake = FakeVLLM([FakeModel(MODEL, context_length=32768)])
    async with fake, gateways(fake, tmp / "e2e", server.url) as (bases, keys, nexuses):
        urls = {t: bases[t] + "/v1/chat/completions" for t in TARGETS}
        blocks, seen = await interleaved(cfg, urls, keys, fake, server, admin)
        result = compare(blocks, seen)
        redis_store = nexuses["redis"].state.store
        assert isinstance(redis_store, RedisStore)
        result["redis_store_down_at_end"] = redis_store.down
    return result


# -- report -------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def rng(s: Mapping[str, float], spec: str = "+.0f") -> str:
    return f"{fmt(s['median'], spec)} ({fmt(s['min'], spec)}..{fmt(s['max'], spec)})"


def table(results: dict[str, Any]) -> str:
    sq = results["in_process"]["sqlite"]
    lines = [
        f"\n1a. in process, SQLite store + LocalLimiter ({sq['calls_per_batch']} calls a batch)"
    ]
    for name, r in sq["ns_per_call"].items():
        lines.append(
            f"   {name:<46}{r['median'] / 1000:>8.2f} µs  (batches {r['min'] / 1000:.2f}.."
            f"{r['max'] / 1000:.2f})"
        )
    verdict = "meets" if sq["meets_target"] else "MISSES"
    lines.append(
        f"   -> authenticate + admit {sq['checks_us']:.2f} µs: {verdict} the < "
        f"{TARGET_CHECKS_US:g} µs target"
    )
    rd = results["in_process"]["redis"]
    lines.append(f"\n1b. in process, Redis ({rd['calls_per_batch']} calls a batch)")
    for name, r in rd["per_call"].items():
        lines.append(
            f"   {name:<46}p50 {fmt(r['p50_us'], '.1f'):>6} µs, p90 {fmt(r['p90_us'], '.1f')}, "
            f"p99 {fmt(r['p99_us'], '.1f')}; batch means {fmt(r['batch_mean_us']['median'], '.1f')}"
            f"; CPU {fmt(r['cpu_us_per_call']['median'], '.1f')} µs"
        )
    fs = rd["acquire_appendfsync_always"]
    lines += [
        f"   acquire - PING p50 {rd['acquire_minus_ping_p50_us']:+.1f} µs (ratio "
        f"{rd['acquire_over_ping_p50']:.2f}); commands per acquire "
        f"{ {k: round(v, 3) for k, v in rd['commands_per_acquire'].items()} }; script on the "
        f"server {fmt(rd['evalsha_server_usec_per_call'], '.1f')} µs",
        f"   acquire with appendfsync always: p50 {fmt(fs['p50_us'], '.0f')} µs, p99 "
        f"{fmt(fs['p99_us'], '.0f')} µs",
    ]
    e = results["end_to_end"]
    lines.append(
        f"\n2. end to end ({e['requests_per_target']} sequential requests per target, "
        f"{e['rounds']} rounds; µs)"
    )
    head = (
        f"   {'target':<10}{'p50':>7}{'p90':>7}{'added p50':>11}{'added p90':>11}{'Nexus CPU':>11}"
    )
    lines += [head]
    for t in TARGETS:
        added = e["added_p50_us"].get(t)
        lines.append(
            f"   {t:<10}{fmt(e['p50_us'][t]):>7}{fmt(e['p90_us'][t]):>7}{fmt(added):>11}"
            f"{fmt(e['added_p90_us'].get(t)):>11}{fmt(e['nexus_cpu_us_per_request'].get(t)):>11}"
        )
    for label, d in e["differences"].items():
        lines.append(
            f"   {label:<20} added p50 {d['added_p50_us']:+.0f} (rounds "
            f"{rng(d['per_round_added_p50_us'])}), CPU {d['nexus_cpu_us']:+.0f} (rounds "
            f"{rng(d['per_round_cpu_us'])})"
        )
    for t in REDIS_TARGETS:
        commands = {k: round(v, 3) for k, v in e["redis_commands_per_request"][t].items()}
        lines.append(
            f"   {t}: redis-server CPU per request "
            f"{e['redis_server_cpu_us_per_request'][t]:.1f} µs; Redis commands per request "
            f"{commands}"
        )
    return "\n".join(lines)


def redis_version() -> str | None:
    done = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def meta(args: argparse.Namespace, cfg: Settings) -> dict[str, Any]:
    return {
        **base_meta("benchmarks.tenants"),
        "redis_client": "nexus.store.resp",
        "redis_server": redis_version(),
        "client": "aiohttp ClientSession, one keep-alive connection per target",
        "quick": args.quick,
        "settings": asdict(cfg),
        "limits": LIMITS,
    }


async def measure(args: argparse.Namespace, tmp: Path, log_file: IO[str]) -> dict[str, Any]:
    cfg = Settings.quick() if args.quick else Settings.full()
    logs.setup(LoggingConfig(level="info", format="json"), log_file)
    results: dict[str, Any] = {"meta": meta(args, cfg)}
    with redis_server(tmp / "redis") as server:
        admin = Admin(server.url)
        try:
            # The test helper fsyncs every write (appendfsync always) for its crash tests;
            # measured here with Redis' own default for an append-only file.
            await admin.config_set("appendfsync", "everysec")
            results["meta"]["redis_appendfsync"] = "everysec"
            log("1a. in process: authenticate + admit, SQLite store, LocalLimiter ...")
            results["in_process"] = {"sqlite": await in_process_sqlite(cfg, tmp)}
            log(f"    authenticate + admit {results['in_process']['sqlite']['checks_us']:.2f} µs")
            log("1b. in process: RedisLimiter.acquire vs PING ...")
            results["in_process"]["redis"] = await in_process_redis(cfg, server, admin)
            await admin.flushall()
            log("2. end to end: direct / auth off / auth on (SQLite) / auth on (Redis) ...")
            results["end_to_end"] = await end_to_end(cfg, tmp, server, admin)
        finally:
            await admin.aclose()
    results["meta"]["loadavg_end"] = os.getloadavg()
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tenants", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer batches and requests (smoke run)")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="write the results here (default: benchmarks/results/tenants-DATE.json)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.json) if args.json else RESULTS_DIR / f"tenants-{stamp}.json"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nexus-tenants-bench-") as name:
        tmp = Path(name)
        with open(tmp / "nexus.log", "w") as log_file:
            try:
                results = uvloop.run(measure(args, tmp, log_file))
            except KeyboardInterrupt:
                log("benchmarks.tenants: interrupted; servers stopped")
                return 130
            finally:
                logs.flush()
        results["meta"]["nexus_log"] = nexus_log_summary(tmp / "nexus.log")
    results["meta"]["wall_s"] = time.monotonic() - started
    print(table(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"results: {out} ({results['meta']['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
