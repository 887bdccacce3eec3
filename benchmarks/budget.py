"""What a monthly budget costs on the request path, and how often the state store writes:
``python -m benchmarks.budget [--quick] [--json PATH]``. See docs/benchmarks.md, "Budget and
state store".

Why: with ``[budget] monthly_limit`` set, Nexus counts the prompt of every chat a cloud
backend could serve with the provider's tokenizer (``pipeline/plan.py`` ``count_prompt``),
checks each cloud candidate's estimated cost (``Budget.refuses``), adds
``X-Nexus-Budget-Status`` / ``-Remaining`` to every answer, and buffers each cloud request's
cost, which a background task writes to SQLite once per ``storage.flush_interval_seconds``.
Local-only traffic is never tokenized. This measures what each of those costs:

1. **Local-only traffic**: a local vLLM fake answering at once; one sequential client per
   target on a keep-alive connection: direct to the fake, through Nexus without a budget,
   through Nexus with one. Both Nexus instances have the same backends (the local fake and an
   ``openai`` cloud backend serving other models), so the requests stay local-only and the
   budget is the only difference. Added latency = Nexus p50 - direct p50, per round and
   pooled; the with/without ratio should be 1 within noise.
2. **Cloud-bound traffic**: the same three targets in front of an ``openai``-type backend on a
   FakeOpenAI (``api_key_env = "BENCH_KEY"``), model ``m`` (priced by config, no OpenAI
   tokenizer: an *estimated* count from the characters) and ``gpt-4o-mini`` (an o200k family:
   an *exact* count with tiktoken, bundled price), each with a short prompt and a long one
   (~4,000 o200k tokens). Added latency p50 and the CPU time per request of this process
   (client, fakes and Nexus: the client and fakes cost the same in every target, so the
   difference between the targets is Nexus' own), budget off vs on. The tokenizer's own cost
   is also timed in process (``tokens.count_chat``, median of batches).
3. **Store writes**: a fresh Nexus with the budget on, 32 concurrent clients against the
   cloud fake (the two cloud models alternating) for ``store_seconds``; the store's
   ``_add_spend`` (one SQLite transaction, run on the store's thread) and ``Budget.flush``
   (the transaction, its thread hop, and the re-read of the cycle's totals) are wrapped to
   count transactions and rows and to time them; afterwards the SQLite file itself is read:
   every answered cloud request must be in it.
4. **Memory**: ``python -m nexus serve`` as a child process (the same config), budget off and
   on: VmRSS once it has settled after start-up (the budget's tokenizer preload included),
   and after a little traffic; and, in a bare child, VmRSS before and after
   ``tokens.preload()`` alone.

Parts 1-3 run Nexus in this process, built as ``nexus serve`` builds it (TOML file ->
``config.load`` -> ``Server``, tests/helpers.py ``running_nexus``; discovery off, JSON request
log at info to a file), on uvloop as ``nexus serve`` runs, with the fakes of tests/fakes as
real HTTP servers. Rounds are interleaved: in each, every target serves a block of
sequential requests, in an order that rotates from round to round; the CPU time of a block is
``time.process_time()`` around it. The client is aiohttp (a ``ClientSession`` with one
keep-alive connection per target; 32 in part 3). Everything binds 127.0.0.1, every wait has
a timeout, and every server is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import random
import sqlite3
import statistics
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
from tests.fakes import FakeModel, FakeOpenAI, FakeVLLM
from tests.helpers import Nexus, running_nexus, wait_until, write_config

from benchmarks import procs
from benchmarks.common import base_meta, log, nexus_log_summary
from benchmarks.procs import HOST, ROOT
from benchmarks.report import pct
from nexus import logs, tokens
from nexus.config import LoggingConfig
from nexus.store import SpendRow

RESULTS_DIR = ROOT / "benchmarks" / "results"
LOCAL_MODEL = "bench-local"
CLOUD_MODELS = ("m", "gpt-4o-mini")  # estimated count; exact o200k count
KEY_ENV = "BENCH_KEY"
PRICE_M = {"input": 1.0, "output": 2.0}  # USD per million tokens
MONTHLY_LIMIT = 1_000_000.0  # large: nothing is ever refused
FLUSH_SECONDS = 1.0
LONG_PROMPT_TOKENS = 4000  # o200k tokens of the long prompt's text, about
REQUEST_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 15.0
THROUGHPUT_CONNS = 32
JSON_HEADERS = {"Content-Type": "application/json"}
MODES = ("off", "on")  # budget


@dataclass(frozen=True)
class Settings:
    rounds: int
    per_round: int  # sequential requests per target per round (one block)
    warmup: int  # per target, before the rounds
    store_seconds: float
    micro_batches: int = 7
    micro_short: int = 2000  # count_chat calls per batch, short prompt
    micro_long: int = 100  # long prompt

    @classmethod
    def full(cls) -> Settings:
        return cls(rounds=30, per_round=100, warmup=300, store_seconds=10.0)

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            rounds=5,
            per_round=100,
            warmup=100,
            store_seconds=3.0,
            micro_batches=3,
            micro_short=400,
            micro_long=20,
        )


# -- prompts ------------------------------------------------------------------------------

# Common English words, and some of this domain's: the long prompt is made of them.
WORD_LIST = (
    "the of and to in is that for it as with was on be by this are from or at an have not but "
    "which they one you all were we when there can more if has will would each about their so "
    "what up out time into only other some could these two may then do first any like now my "
    "such make over our even most me state after also made many did must before back see "
    "through way where get much go well your know should down work year because come people "
    "just both life world budget gateway request backend latency token model cloud local "
    "server answer prompt routing measure throughput memory process thread billing monthly "
    "limit estimate exact cost price provider encoding sqlite transaction flush interval"
)
WORDS = WORD_LIST.split()


def long_text(target_tokens: int) -> str:
    """Deterministic English-like prose (sentences of common words, commas, a few numbers)
    of about ``target_tokens`` o200k tokens: one word is about one token."""
    rng = random.Random(20261206)
    sentences: list[str] = []
    words = 0
    while words < target_tokens * 0.86:  # punctuation and numbers add the rest
        length = rng.randint(8, 22)
        picked = [rng.choice(WORDS) for _ in range(length)]
        if rng.random() < 0.3:
            picked.insert(rng.randint(1, length - 1), str(rng.randint(2, 2026)))
        if rng.random() < 0.5:
            picked[rng.randint(1, length - 2)] += ","
        sentences.append(" ".join(picked).capitalize() + ".")
        words += length
    return " ".join(sentences)


def chat_body(model: str, prompt: str) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": prompt},
            ],
            "max_tokens": 16,
        }
    )


def prompts() -> dict[str, str]:
    return {"short": "Say ok.", "long": long_text(LONG_PROMPT_TOKENS) + "\n\nSummarise this."}


# -- servers ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fakes() -> AsyncIterator[tuple[FakeVLLM, FakeOpenAI]]:
    """A local vLLM fake with LOCAL_MODEL, a cloud (OpenAI) fake with the cloud models."""
    local = FakeVLLM([FakeModel(LOCAL_MODEL, context_length=32768)])
    cloud = FakeOpenAI([FakeModel(m, context_length=32768) for m in CLOUD_MODELS])
    async with local, cloud:
        yield local, cloud


def backend_entries(local: FakeVLLM, cloud: FakeOpenAI) -> list[dict[str, Any]]:
    return [
        {"name": "local", "url": local.url, "type": "vllm"},
        {
            "name": "cloud",
            "url": cloud.url,
            "type": "openai",
            "api_key_env": KEY_ENV,
            "prices": {"m": PRICE_M},  # gpt-4o-mini: the bundled price list
        },
    ]


def sections(budget: bool, where: Path, port: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {
        "server": {
            "port": port,
            "max_concurrent_requests": 1000,
            "request_timeout_seconds": 30,
        },
        "logging": {"level": "info", "format": "json"},
    }
    if budget:
        out["budget"] = {"monthly_limit": MONTHLY_LIMIT}
        out["storage"] = {
            "path": str(where / "nexus.db"),
            "flush_interval_seconds": FLUSH_SECONDS,
        }
    return out


async def settled(gateway: Nexus) -> None:
    """Every backend routable with its models."""
    wanted = {"local": {LOCAL_MODEL}, "cloud": set(CLOUD_MODELS)}

    def ready() -> bool:
        found = {b.name: b for b in gateway.state.registry}
        return all(
            name in found and found[name].routable and models <= set(found[name].models)
            for name, models in wanted.items()
        )

    await wait_until(ready, timeout=SETTLE_TIMEOUT_S, interval=0.02, what="backends routable")


@contextlib.asynccontextmanager
async def nexus_pair(
    local: FakeVLLM, cloud: FakeOpenAI, tmp: Path
) -> AsyncIterator[dict[str, Nexus]]:
    """Two Nexus instances in front of the same fakes: budget off and on."""
    entries = backend_entries(local, cloud)
    for mode in MODES:
        (tmp / mode).mkdir(parents=True, exist_ok=True)
    async with (
        running_nexus(tmp / "off", entries, **sections(False, tmp / "off")) as off,
        running_nexus(tmp / "on", entries, **sections(True, tmp / "on")) as on,
    ):
        assert off.state.budget is None and on.state.budget is not None
        await settled(off)
        await settled(on)
        # The budget's Nexus started the preload of the openai encoding (o200k) in a thread;
        # this waits for it (the registry's lock).
        if not await asyncio.to_thread(tokens.preload, ["openai"]):
            raise SystemExit("the tokenizer encodings did not load: is the [tokenizers] extra in?")
        yield {"off": off, "on": on}


# -- the client ---------------------------------------------------------------------------


@dataclass
class Block:
    latencies_us: list[float]
    cpu_s: float

    @property
    def n(self) -> int:
        return len(self.latencies_us)


@dataclass
class Seen:
    """What the answers of one target said about themselves."""

    backends: Counter[str] = field(default_factory=Counter)
    budget_status: Counter[str] = field(default_factory=Counter)


def session_for(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def post(session: aiohttp.ClientSession, url: str, body: bytes, seen: Seen) -> float:
    """One request; its latency in µs. Anything but a 200 stops the run."""
    started = time.perf_counter()
    async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
        raw = await resp.read()
    elapsed = (time.perf_counter() - started) * 1e6
    if resp.status != 200:
        raise RuntimeError(f"{url}: HTTP {resp.status}: {raw[:300]!r}")
    seen.backends[resp.headers.get("X-Nexus-Backend", "-")] += 1
    seen.budget_status[resp.headers.get("X-Nexus-Budget-Status", "-")] += 1
    return elapsed


async def block(session: aiohttp.ClientSession, url: str, body: bytes, n: int, seen: Seen) -> Block:
    cpu = time.process_time()
    latencies = [await post(session, url, body, seen) for _ in range(n)]
    return Block(latencies, time.process_time() - cpu)


async def interleaved(
    urls: Mapping[str, str], body: bytes, cfg: Settings, servers: Sequence[FakeOpenAI | FakeVLLM]
) -> tuple[dict[str, list[Block]], dict[str, Seen]]:
    """``cfg.rounds`` rounds; in each, every target serves ``cfg.per_round`` sequential
    requests on its own keep-alive connection, in an order rotating from round to round.
    The fakes' request records are dropped after every block (they keep every body)."""
    names = list(urls)
    blocks: dict[str, list[Block]] = {n: [] for n in names}
    seen = {n: Seen() for n in names}
    async with contextlib.AsyncExitStack() as stack:
        sessions = {n: await stack.enter_async_context(session_for(1)) for n in names}
        for name in names:
            await block(sessions[name], urls[name], body, cfg.warmup, Seen())
            forget(servers)
        for index in range(cfg.rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                blocks[name].append(
                    await block(sessions[name], urls[name], body, cfg.per_round, seen[name])
                )
                forget(servers)
    return blocks, seen


def forget(servers: Sequence[FakeOpenAI | FakeVLLM]) -> None:
    for server in servers:
        server.requests.clear()


# -- statistics ---------------------------------------------------------------------------


def p50(blocks: Sequence[Block], q: float = 50) -> float:
    value = pct([x for b in blocks for x in b.latencies_us], q)
    assert value is not None
    return value


def cpu_us(blocks: Sequence[Block]) -> float:
    return sum(b.cpu_s for b in blocks) / sum(b.n for b in blocks) * 1e6


def compare(blocks: dict[str, list[Block]]) -> dict[str, Any]:
    """Added latency (p50 and p90 through Nexus minus direct's), pooled and per round, and CPU
    per request of this process per target; the budget's difference (on - off) and ratio."""
    rounds = len(blocks["direct"])
    direct = blocks["direct"]
    out: dict[str, Any] = {
        "requests_per_target": sum(b.n for b in direct),
        "p50_us": {n: p50(b) for n, b in blocks.items()},
        "added_p50_us": {m: p50(blocks[m]) - p50(direct) for m in MODES},
        "added_p90_us": {m: p50(blocks[m], 90) - p50(direct, 90) for m in MODES},
        "cpu_us_per_request": {n: cpu_us(b) for n, b in blocks.items()},
        "nexus_cpu_us_per_request": {m: cpu_us(blocks[m]) - cpu_us(direct) for m in MODES},
    }
    added = out["added_p50_us"]
    cpu = out["nexus_cpu_us_per_request"]
    out["added_p50_on_minus_off_us"] = added["on"] - added["off"]
    out["added_p50_ratio_on_off"] = ratio(added["on"], added["off"])
    out["added_p90_ratio_on_off"] = ratio(out["added_p90_us"]["on"], out["added_p90_us"]["off"])
    out["cpu_on_minus_off_us"] = cpu["on"] - cpu["off"]
    per_round: dict[str, list[float]] = {"added_diff_us": [], "added_ratio": [], "cpu_diff_us": []}
    for i in range(rounds):
        base = p50([direct[i]])
        on, off = p50([blocks["on"][i]]) - base, p50([blocks["off"][i]]) - base
        per_round["added_diff_us"].append(on - off)
        if off > 0:
            per_round["added_ratio"].append(on / off)
        on_cpu = blocks["on"][i].cpu_s / blocks["on"][i].n
        off_cpu = blocks["off"][i].cpu_s / blocks["off"][i].n
        per_round["cpu_diff_us"].append((on_cpu - off_cpu) * 1e6)
    out["per_round"] = per_round
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def seen_dict(seen: Mapping[str, Seen]) -> dict[str, Any]:
    return {
        n: {"x_nexus_backend": dict(s.backends), "x_nexus_budget_status": dict(s.budget_status)}
        for n, s in seen.items()
    }


# -- 1 and 2: the request path ------------------------------------------------------------


async def local_only(
    cfg: Settings, pair: Mapping[str, Nexus], local: FakeVLLM, cloud: FakeOpenAI
) -> dict[str, Any]:
    path = "/v1/chat/completions"
    urls = {"direct": local.url + path, **{m: pair[m].url + path for m in MODES}}
    counted = dict(tokens.COUNTED)
    blocks, seen = await interleaved(urls, chat_body(LOCAL_MODEL, "Say ok."), cfg, [local, cloud])
    result = compare(blocks)
    result["tokens_counted_during"] = {k: tokens.COUNTED[k] - v for k, v in counted.items()}
    result["answers"] = seen_dict(seen)
    return result


async def cloud_bound(
    cfg: Settings, pair: Mapping[str, Nexus], local: FakeVLLM, cloud: FakeOpenAI
) -> dict[str, Any]:
    path = "/v1/chat/completions"
    urls = {"direct": cloud.url + path, **{m: pair[m].url + path for m in MODES}}
    results: dict[str, Any] = {}
    for model in CLOUD_MODELS:
        for kind, prompt in prompts().items():
            body = chat_body(model, prompt)
            count = tokens.count_chat(orjson.loads(body), provider="openai", model=model)
            counted = sum(tokens.COUNTED.values())
            blocks, seen = await interleaved(urls, body, cfg, [local, cloud])
            result = compare(blocks)
            result["prompt"] = {
                "chars": len(prompt),
                "body_bytes": len(body),
                "tokens": count.tokens,
                "method": count.method,
            }
            result["tokens_counted_during"] = sum(tokens.COUNTED.values()) - counted
            result["answers"] = seen_dict(seen)
            result["count_chat_us"] = micro_count(body, model, cfg, kind == "long")
            results[f"{model} / {kind}"] = result
            log(progress(f"{model} / {kind}", result))
    return results


def micro_count(body: bytes, model: str, cfg: Settings, long: bool) -> dict[str, float]:
    """``tokens.count_chat`` of the parsed body as ``count_prompt`` calls it, µs per call:
    median and best of ``cfg.micro_batches`` batches."""
    parsed = orjson.loads(body)
    n = cfg.micro_long if long else cfg.micro_short
    per_call = []
    for _ in range(cfg.micro_batches):
        started = time.perf_counter()
        for _ in range(n):
            tokens.count_chat(parsed, provider="openai", model=model)
        per_call.append((time.perf_counter() - started) / n * 1e6)
    return {"median_us": statistics.median(per_call), "best_us": min(per_call)}


def progress(label: str, r: Mapping[str, Any]) -> str:
    added, cpu = r["added_p50_us"], r["nexus_cpu_us_per_request"]
    return (
        f"  {label:<22} added p50 off {added['off']:.0f} µs, on {added['on']:.0f} µs "
        f"(on-off {r['added_p50_on_minus_off_us']:+.0f}); Nexus CPU/request off "
        f"{cpu['off']:.0f} µs, on {cpu['on']:.0f} µs (on-off {r['cpu_on_minus_off_us']:+.0f})"
    )


# -- 3. store writes ----------------------------------------------------------------------


@dataclass
class StoreProbe:
    """Wraps a running Nexus' store and budget: every transaction and every flush, timed."""

    transactions: list[tuple[float, int, float]] = field(default_factory=list)  # t, rows, s
    flushes: list[tuple[float, float]] = field(default_factory=list)  # t, s

    def install(self, gateway: Nexus) -> None:
        store, budget = gateway.state.store, gateway.state.budget
        assert store is not None and budget is not None
        add: Callable[[list[SpendRow]], None] = store._add_spend  # type: ignore[attr-defined]
        flush: Callable[[], Awaitable[None]] = budget.flush

        def counted_add(rows: list[SpendRow]) -> None:  # on the store's own thread
            started = time.perf_counter()
            add(rows)
            self.transactions.append((started, len(rows), time.perf_counter() - started))

        async def timed_flush() -> None:
            started = time.perf_counter()
            await flush()
            self.flushes.append((started, time.perf_counter() - started))

        store._add_spend = counted_add  # type: ignore[attr-defined]
        budget.flush = timed_flush  # type: ignore[method-assign]


async def hammer(url: str, seconds: float, conns: int) -> tuple[int, Counter[str], float]:
    """``conns`` clients sending requests back to back for ``seconds`` (the two cloud models
    alternating); (answers, X-Nexus-Backend counts, wall seconds)."""
    bodies = [chat_body(m, "Say ok.") for m in CLOUD_MODELS]
    seen = Seen()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def client(index: int, session: aiohttp.ClientSession) -> int:
        done = 0
        while loop.time() < deadline:
            await post(session, url, bodies[(index + done) % 2], seen)
            done += 1
        return done

    async with session_for(conns) as session, asyncio.timeout(seconds + 30):
        started = time.perf_counter()
        counts = await asyncio.gather(*(client(i, session) for i in range(conns)))
        wall = time.perf_counter() - started
    return sum(counts), seen.backends, wall


def read_spend(db: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        cursor = conn.execute(
            "SELECT cycle, backend, model, requests, prompt_tokens, completion_tokens, cost_usd "
            "FROM spend ORDER BY backend, model"
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]


async def store_writes(
    cfg: Settings, local: FakeVLLM, cloud: FakeOpenAI, tmp: Path
) -> dict[str, Any]:
    where = tmp / "store"
    where.mkdir(parents=True, exist_ok=True)
    probe = StoreProbe()
    warm = 0
    async with running_nexus(where, backend_entries(local, cloud), **sections(True, where)) as gw:
        await settled(gw)
        probe.install(gw)
        url = gw.url + "/v1/chat/completions"
        async with session_for(1) as session:
            for model in CLOUD_MODELS:
                for _ in range(20):
                    await post(session, url, chat_body(model, "Say ok."), Seen())
                    warm += 1
        forget([cloud])
        cpu = time.process_time()
        started = time.perf_counter()
        answered, backends, wall = await hammer(url, cfg.store_seconds, THROUGHPUT_CONNS)
        ended = time.perf_counter()
        cpu = time.process_time() - cpu
        forget([cloud])
        before_stop = len(probe.transactions)
    # Nexus stopped: the budget's last flush is in the file.
    rows = read_spend(where / "nexus.db")
    window = [t for t in probe.transactions if started <= t[0] <= ended]
    flushes = [f for f in probe.flushes if started <= f[0] <= ended]
    tx_s = [t[2] * 1e6 for t in probe.transactions]
    flush_s = [f[1] * 1e6 for f in probe.flushes]
    gaps = [b[0] - a[0] for a, b in zip(probe.transactions, probe.transactions[1:], strict=False)]
    return {
        "connections": THROUGHPUT_CONNS,
        "seconds": wall,
        "requests": answered,
        "requests_per_s": answered / wall,
        "answered_by": dict(backends),
        "cpu_s_whole_process": cpu,
        "flush_interval_s": FLUSH_SECONDS,
        "transactions_in_window": len(window),
        "transactions_per_s": len(window) / (ended - started),
        "rows_in_window": sum(t[1] for t in window),
        "rows_per_s": sum(t[1] for t in window) / (ended - started),
        "rows_per_transaction": sorted({t[1] for t in probe.transactions}),
        "requests_per_transaction": answered / len(window) if window else None,
        "flushes_in_window": len(flushes),
        "transactions_total": len(probe.transactions),
        "transactions_at_stop": len(probe.transactions) - before_stop,
        "transaction_us": {"p50": pct(tx_s, 50), "p99": pct(tx_s, 99), "max": max(tx_s)},
        "flush_us": {"p50": pct(flush_s, 50), "p99": pct(flush_s, 99), "max": max(flush_s)},
        "seconds_between_transactions": {
            "p50": pct(gaps, 50),
            "min": min(gaps, default=None),
            "max": max(gaps, default=None),
        },
        "file_rows": rows,
        "file_requests": sum(r["requests"] for r in rows),
        "client_requests_to_cloud": answered + warm,
        "db_bytes": {
            p.name: p.stat().st_size for p in sorted(where.glob("nexus.db*")) if p.is_file()
        },
    }


# -- 4. memory ----------------------------------------------------------------------------

PRELOAD_CHILD = """
import json, os, time
from benchmarks.procs import rss_mb
import nexus.tokens as tokens
pid = os.getpid()
out = {"rss_before_mb": rss_mb(pid)}
for provider, name in (("openai", "o200k"), ("anthropic", "cl100k")):
    started = time.perf_counter()
    out[name + "_ok"] = tokens.preload([provider])
    out[name + "_s"] = time.perf_counter() - started
    out["rss_after_" + name + "_mb"] = rss_mb(pid)
print(json.dumps(out))
"""


async def settled_rss(
    proc: procs.Proc, least: float = 3.0, timeout: float = 20.0
) -> tuple[float, float]:
    """VmRSS once at least ``least`` seconds have passed and it has not moved more than
    0.2 MB for 1.5 s (the preload thread is done); (MB, seconds waited)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    last = proc.rss() or 0.0
    since = started
    while loop.time() - started < timeout:
        await asyncio.sleep(0.1)
        now = proc.rss() or 0.0
        if abs(now - last) > 0.2:
            last, since = now, loop.time()
        elif loop.time() - since >= 1.5 and loop.time() - started >= least:
            return now, loop.time() - started
    return proc.rss() or 0.0, loop.time() - started


async def memory(local: FakeVLLM, cloud: FakeOpenAI, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    bodies = {
        "local short": chat_body(LOCAL_MODEL, "Say ok."),
        "m short": chat_body("m", "Say ok."),
        "gpt-4o-mini long": chat_body("gpt-4o-mini", prompts()["long"]),
    }
    for mode in MODES:
        where = tmp / f"rss-{mode}"
        where.mkdir(parents=True, exist_ok=True)
        port = procs.free_port()
        config = write_config(
            where, backend_entries(local, cloud), **sections(mode == "on", where, port)
        )
        proc = await procs.spawn(
            f"nexus-{mode}", ["-m", "nexus", "serve", "-c", str(config)], where / "nexus.log"
        )
        try:
            url = f"http://{HOST}:{port}"
            async with session_for(1) as session:
                await procs.wait_until(
                    session,
                    "GET",
                    url + "/health",
                    ok=lambda d: orjson.loads(d).get("status") == "healthy",
                    timeout=30,
                    interval=0.05,
                    proc=proc,
                )
                idle, waited = await settled_rss(proc)
                seen = Seen()
                first_ms: dict[str, float] = {}
                for kind, body in bodies.items():
                    for i in range(50):
                        us = await post(session, url + "/v1/chat/completions", body, seen)
                        if i == 0:
                            first_ms[kind] = us / 1000
                forget([local, cloud])
                after = proc.rss()
            out[mode] = {
                "idle_settled_mb": idle,
                "settle_wait_s": waited,
                "after_traffic_mb": after,
                "traffic": "50 x local short, 50 x m short, 50 x gpt-4o-mini long",
                "answered_by": dict(seen.backends),
                # An encoding not loaded yet is loaded by the first request that needs it.
                "first_request_ms": first_ms,
            }
        finally:
            await proc.stop()
    out["on_minus_off_idle_mb"] = out["on"]["idle_settled_mb"] - out["off"]["idle_settled_mb"]
    out["on_minus_off_after_traffic_mb"] = (out["on"]["after_traffic_mb"] or 0.0) - (
        out["off"]["after_traffic_mb"] or 0.0
    )
    out["preload_alone"] = await procs.run_json(["-c", PRELOAD_CHILD], timeout=60)
    return out


# -- report -------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def spread(values: Sequence[float], spec: str = ".0f") -> str:
    """Median of the rounds' values, and their range."""
    if not values:
        return "-"
    middle = fmt(statistics.median(values), spec)
    return f"{middle} ({fmt(min(values), spec)}..{fmt(max(values), spec)})"


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    loc = results["local_only"]
    a = loc["added_p50_us"]
    lines += [
        f"\n1. local-only traffic ({loc['requests_per_target']} sequential requests per target, "
        f"direct p50 {fmt(loc['p50_us']['direct'])} µs)",
        f"   added p50: budget off {fmt(a['off'])} µs, on {fmt(a['on'])} µs, ratio on/off "
        f"{fmt(loc['added_p50_ratio_on_off'], '.2f')} (rounds: "
        f"{spread(loc['per_round']['added_ratio'], '.2f')}); p90 ratio "
        f"{fmt(loc['added_p90_ratio_on_off'], '.2f')}",
        f"   Nexus CPU per request: off {fmt(loc['nexus_cpu_us_per_request']['off'])} µs, on "
        f"{fmt(loc['nexus_cpu_us_per_request']['on'])} µs (on-off, rounds: "
        f"{spread(loc['per_round']['cpu_diff_us'])}); tokens counted meanwhile: "
        f"{loc['tokens_counted_during']}",
    ]
    head = (
        f"{'2. cloud-bound':<22}{'tokens':>16}{'count_chat':>11}{'added off':>10}"
        f"{'on':>6}{'on-off':>7}{'rounds on-off':>20}{'CPU off':>8}{'on':>6}{'on-off':>7}"
        f"{'rounds on-off':>20}"
    )
    lines += ["", head, "-" * len(head)]
    for label, r in results["cloud"].items():
        prompt = r["prompt"]
        cpu = r["nexus_cpu_us_per_request"]
        lines.append(
            f"{label:<22}{prompt['tokens']:>6} {prompt['method']:<9}"
            f"{fmt(r['count_chat_us']['median_us'], '.1f'):>11}"
            f"{fmt(r['added_p50_us']['off']):>10}{fmt(r['added_p50_us']['on']):>6}"
            f"{fmt(r['added_p50_on_minus_off_us'], '+.0f'):>7}"
            f"{spread(r['per_round']['added_diff_us']):>20}"
            f"{fmt(cpu['off']):>8}{fmt(cpu['on']):>6}{fmt(r['cpu_on_minus_off_us'], '+.0f'):>7}"
            f"{spread(r['per_round']['cpu_diff_us']):>20}"
        )
    lines.append(
        "   (µs; added = Nexus p50 - direct p50, pooled; CPU = Nexus' CPU per request; "
        "rounds: median (min..max) of the per-round differences)"
    )
    st = results["store"]
    lines += [
        f"\n3. store writes: {st['requests']} requests in {st['seconds']:.1f} s "
        f"({st['requests_per_s']:.0f} req/s, {st['connections']} connections)",
        f"   transactions {st['transactions_in_window']} ({st['transactions_per_s']:.2f}/s), "
        f"rows {st['rows_in_window']} ({st['rows_per_s']:.2f}/s), rows per transaction "
        f"{st['rows_per_transaction']}, requests per transaction "
        f"{fmt(st['requests_per_transaction'])}",
        f"   transaction p50 {fmt(st['transaction_us']['p50'])} µs, p99 "
        f"{fmt(st['transaction_us']['p99'])} µs; flush (transaction + re-read, on the loop) p50 "
        f"{fmt(st['flush_us']['p50'])} µs, p99 {fmt(st['flush_us']['p99'])} µs, max "
        f"{fmt(st['flush_us']['max'])} µs",
        f"   in the file: {st['file_requests']} requests (client sent "
        f"{st['client_requests_to_cloud']} to the cloud), rows "
        f"{[(r['model'], r['requests']) for r in st['file_rows']]}",
    ]
    mem = results["memory"]
    alone = mem["preload_alone"]
    lines += [
        f"\n4. RSS of nexus serve: budget off {fmt(mem['off']['idle_settled_mb'], '.1f')} MB, on "
        f"{fmt(mem['on']['idle_settled_mb'], '.1f')} MB idle (settled, preload included); after "
        f"traffic {fmt(mem['off']['after_traffic_mb'], '.1f')} / "
        f"{fmt(mem['on']['after_traffic_mb'], '.1f')} MB",
        "   first request of each kind, ms (off / on): "
        + ", ".join(
            f"{kind} {fmt(mem['off']['first_request_ms'][kind], '.1f')} / "
            f"{fmt(mem['on']['first_request_ms'][kind], '.1f')}"
            for kind in mem["on"]["first_request_ms"]
        ),
        f"   tokens.preload alone, in a bare child: {fmt(alone['rss_before_mb'], '.1f')} MB, "
        f"+ o200k {fmt(alone['rss_after_o200k_mb'], '.1f')} MB ({alone['o200k_s']:.2f} s), "
        f"+ cl100k {fmt(alone['rss_after_cl100k_mb'], '.1f')} MB ({alone['cl100k_s']:.2f} s)",
    ]
    return "\n".join(lines)


def meta(args: argparse.Namespace, cfg: Settings) -> dict[str, Any]:
    import tiktoken

    return {
        **base_meta("benchmarks.budget"),
        "tiktoken": tiktoken.__version__,
        "client": "aiohttp ClientSession, one keep-alive connection per target (32 in part 3)",
        "quick": args.quick,
        "settings": asdict(cfg),
        "monthly_limit": MONTHLY_LIMIT,
        "flush_interval_seconds": FLUSH_SECONDS,
    }


async def measure(args: argparse.Namespace, tmp: Path, log_file: IO[str]) -> dict[str, Any]:
    cfg = Settings.quick() if args.quick else Settings.full()
    logs.setup(LoggingConfig(level="info", format="json"), log_file)
    results: dict[str, Any] = {"meta": meta(args, cfg)}
    async with fakes() as (local, cloud):
        async with nexus_pair(local, cloud, tmp / "pair") as pair:
            log("1. local-only traffic: direct / budget off / budget on ...")
            results["local_only"] = await local_only(cfg, pair, local, cloud)
            log(progress("local-only", results["local_only"]))
            log("2. cloud-bound traffic ...")
            results["cloud"] = await cloud_bound(cfg, pair, local, cloud)
        log(f"3. store writes: {THROUGHPUT_CONNS} connections, {cfg.store_seconds:g} s ...")
        results["store"] = await store_writes(cfg, local, cloud, tmp)
        log("4. RSS of nexus serve, budget off and on ...")
        results["memory"] = await memory(local, cloud, tmp)
    results["meta"]["loadavg_end"] = os.getloadavg()
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.budget", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer requests, 3 s of load (smoke run)")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="write the results here (default: benchmarks/results/budget-DATE.json)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.json) if args.json else RESULTS_DIR / f"budget-{stamp}.json"
    os.environ.setdefault(KEY_ENV, "sk-bench-0123456789")
    with tempfile.TemporaryDirectory(prefix="nexus-budget-bench-") as name:
        tmp = Path(name)
        with open(tmp / "nexus.log", "w") as log_file:
            try:
                results = uvloop.run(measure(args, tmp, log_file))
            except KeyboardInterrupt:
                log("benchmarks.budget: interrupted; servers stopped")
                return 130
            finally:
                logs.flush()
        results["meta"]["nexus_log"] = nexus_log_summary(tmp / "nexus.log")
    print(table(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
