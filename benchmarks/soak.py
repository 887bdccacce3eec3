"""Soak: many mixed requests through a real ``nexus serve``, with a flapping backend and
clients that walk away mid-stream. Bounded in count and time; 127.0.0.1 only.

    .venv/bin/python -m benchmarks.soak --requests 50000 [--json out.json]

Pass criteria (exit code 1 otherwise): no 5xx (the flapping backend always has a steady
twin, so every request can be served), every in-flight counter back to 0, and RSS growth
under 5 MB between the first and the last tenth of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tests.fakes import FakeModel, FakeVLLM
from tests.helpers import backend_entry, spawn_nexus, write_config

BODY = {"model": "m", "messages": [{"role": "user", "content": "soak"}]}


@dataclass
class Result:
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    disconnects: int = 0
    flaps: int = 0
    seconds: float = 0.0
    rss_mb_by_tenth: list[float] = field(default_factory=list)
    pending_after: dict[str, int] = field(default_factory=dict)
    in_flight_after: int = -1

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))

    @property
    def rss_growth_mb(self) -> float:
        tenth = self.rss_mb_by_tenth
        return tenth[-1] - tenth[0] if len(tenth) >= 2 else 0.0

    def passed(self) -> bool:
        return (
            self.server_errors == 0
            and not any(self.pending_after.values())
            and self.in_flight_after == 0
            and self.rss_growth_mb < 5.0
        )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def one(session: aiohttp.ClientSession, url: str, rnd: random.Random, result: Result) -> None:
    stream = rnd.random() < 0.5
    walk_away = stream and rnd.random() < 0.05
    try:
        async with session.post(url, json={**BODY, "stream": stream}) as resp:
            if walk_away:
                await resp.content.readline()
                resp.close()  # mid-stream disconnect
                result.disconnects += 1
                key = "client-closed"
            else:
                await resp.read()
                key = str(resp.status)
    except aiohttp.ClientError as exc:
        key = type(exc).__name__
    result.statuses[key] = result.statuses.get(key, 0) + 1


async def flap(fake: FakeVLLM, stop: asyncio.Event, result: Result, period: float) -> None:
    port = fake.port
    while not stop.is_set():
        await asyncio.sleep(period)
        await fake.stop()
        result.flaps += 1
        await asyncio.sleep(period)
        await fake.start(port=port)


async def soak(total: int, concurrency: int, flap_period: float, seed: int) -> Result:
    result = Result()
    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            FakeVLLM([FakeModel("m")], stream_chunks=8) as steady,
            FakeVLLM([FakeModel("m")], stream_chunks=8) as flappy,
        ):
            config = write_config(
                Path(tmp),
                [backend_entry(steady, "steady", "vllm"), backend_entry(flappy, "flappy", "vllm")],
                server={"host": "127.0.0.1", "port": 0},
                health_check={"interval_seconds": 1, "failure_threshold": 1},
                # The per-request line off: the soak measures the server, not the log pipe.
                logging={"level": "info", "components": {"request": "warn"}},
            )
            async with spawn_nexus(config) as nexus:
                await asyncio.sleep(0.5)
                url = nexus.url + "/v1/chat/completions"
                stop = asyncio.Event()
                flapper = asyncio.create_task(flap(flappy, stop, result, flap_period))
                connector = aiohttp.TCPConnector(limit=concurrency)
                started = time.perf_counter()
                async with aiohttp.ClientSession(connector=connector) as session:
                    tenth = max(total // 10, 1)
                    sent = 0
                    while sent < total:
                        batch = min(tenth, total - sent)
                        await asyncio.gather(
                            *(one(session, url, rnd, result) for _ in range(batch))
                        )
                        sent += batch
                        result.rss_mb_by_tenth.append(round(rss_mb(nexus.proc.pid), 2))
                    result.requests = sent
                result.seconds = round(time.perf_counter() - started, 2)
                stop.set()
                await flapper
                await asyncio.sleep(0.5)
                async with aiohttp.ClientSession() as session:
                    async with session.get(nexus.url + "/admin/backends") as resp:
                        backends = (await resp.json())["backends"]
                    async with session.get(nexus.url + "/v1/stats") as resp:
                        stats = await resp.json()
                result.pending_after = {b["name"]: b["pending_requests"] for b in backends}
                result.in_flight_after = stats["requests"]["in_flight"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--flap-seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = asyncio.run(soak(args.requests, args.concurrency, args.flap_seconds, args.seed))
    report: dict[str, Any] = {
        **asdict(result),
        "server_errors": result.server_errors,
        "rss_growth_mb": round(result.rss_growth_mb, 2),
        "passed": result.passed(),
        "requests_per_second": (
            round(result.requests / result.seconds, 1) if result.seconds else None
        ),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if result.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
