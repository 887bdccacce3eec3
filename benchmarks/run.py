"""One command for the whole benchmark: ``python -m benchmarks.run [--quick] [--json PATH]
[--gateway-url URL ...]``. See docs/benchmarks.md.

Starts, on 127.0.0.1 only, the fake upstream, the two floor proxies (aiohttp, uvicorn) and
Nexus (each its own process), and with ``--baseline SRC`` a second Nexus run from another
checkout's code ("before"); measures, prints a table with ratios against the floor (and
against "before"), and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from benchmarks import micro, phases, report
from benchmarks.loadgen import Target
from benchmarks.procs import (
    HOST,
    Proc,
    baseline_meta,
    baseline_origin,
    baseline_src,
    drive,
    free_port,
    nexus_serve,
    save,
    spawn,
    wait_chat,
    wait_until,
)
from benchmarks.settings import Settings

# Measured like Nexus but kept out of the ``targets`` key, whose names other tools read as
# direct, floor and gateways (each checked against the floor): listed under ``references``.
REFERENCES = ("floor-asgi", "before")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a short run (smoke test, ~30 s)")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="write the results here (default: benchmarks/results/bench-DATE.json)",
    )
    p.add_argument(
        "--gateway-url",
        action="append",
        default=[],
        metavar="URL",
        help="another gateway on 127.0.0.1, already in front of the upstream "
        "(use --upstream-port); may repeat",
    )
    p.add_argument("--gateway-key", default="", help="bearer token sent to --gateway-url")
    p.add_argument("--upstream-port", type=int, default=0, help="fixed upstream port")
    p.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="throughput driver (auto: wrk when installed)",
    )
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    p.add_argument(
        "--baseline",
        metavar="SRC",
        type=Path,
        help="another checkout's src/ directory: its Nexus is measured too, as "
        "target 'before' (same config), for a before/after comparison",
    )
    args = p.parse_args(argv)
    args.baseline = baseline_src(p, args.baseline)
    return args


def gateway_target(index: int, url: str, key: str) -> Target:
    parsed = URL(url)
    host = "127.0.0.1" if parsed.host == "localhost" else parsed.host
    if parsed.scheme != "http" or host != HOST or parsed.port is None:
        raise SystemExit(f"--gateway-url must be http://127.0.0.1:PORT[/prefix], not {url}")
    prefix = parsed.path.rstrip("/")
    prefix = prefix.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Target(f"gw{index}", host, parsed.port, prefix, headers)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = Settings.quick() if args.quick else Settings.full()
        self.workdir = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
        self.procs: list[Proc] = []
        self.upstream_port = args.upstream_port or free_port()
        self.upstream_url = f"http://{HOST}:{self.upstream_port}"
        self.targets: dict[str, Target] = {}
        # The child processes measured, by target name: for CPU time and RSS.
        self.measured: dict[str, Proc] = {}

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    async def start_upstream(self, session: aiohttp.ClientSession) -> None:
        args = [
            "-m",
            "benchmarks.upstream",
            "--port",
            str(self.upstream_port),
            "--slow-delay",
            str(self.cfg.slow_delay),
            "--paced-delay-ms",
            str(self.cfg.paced_delay_ms),
        ]
        proc = await spawn("upstream", args, self.workdir / "upstream.log")
        self.procs.append(proc)
        await wait_until(session, "GET", self.upstream_url + "/v1/models", proc=proc)
        self.targets["direct"] = Target("direct", HOST, self.upstream_port)

    async def start_floor(
        self, session: aiohttp.ClientSession, name: str = "floor", module: str = "floor_proxy"
    ) -> Proc:
        port = free_port()
        args = ["-m", f"benchmarks.{module}", "--port", str(port), "--upstream", self.upstream_url]
        proc = await spawn(name, args, self.workdir / f"{name}.log")
        self.procs.append(proc)
        await wait_chat(session, f"http://{HOST}:{port}", self.cfg.chat_body, proc=proc)
        self.targets[name] = Target(name, HOST, port)
        self.measured[name] = proc
        return proc

    async def start_nexus(
        self, session: aiohttp.ClientSession, tag: str, name: str = "nexus"
    ) -> tuple[Proc, float]:
        """Spawn Nexus (``name`` "before": from the ``--baseline`` source); seconds from spawn
        to its first successful proxied request."""
        port = free_port()
        args = nexus_serve(self.workdir / f"{name}-{tag}.toml", port, self.upstream_url)
        pythonpath = [str(self.args.baseline)] if name == "before" else []
        loop = asyncio.get_running_loop()
        started = loop.time()
        proc = await spawn(f"{name}-{tag}", args, self.workdir / f"{name}-{tag}.log", pythonpath)
        self.procs.append(proc)
        url = f"http://{HOST}:{port}"
        await wait_chat(session, url, self.cfg.chat_body, proc=proc, timeout=30)
        elapsed = loop.time() - started
        self.targets[name] = Target(name, HOST, port)
        return proc, elapsed

    async def startup(self, session: aiohttp.ClientSession, name: str = "nexus") -> dict[str, Any]:
        samples = []
        for i in range(self.cfg.startup_samples):
            proc, seconds = await self.start_nexus(session, str(i), name)
            samples.append(seconds)
            self.log(f"  {name} start-up {i + 1}: {seconds * 1000:.0f} ms")
            if i < self.cfg.startup_samples - 1:
                await proc.stop()
                self.procs.remove(proc)
            else:
                self.measured[name] = proc
        samples_sorted = sorted(samples)
        return {"samples_s": samples, "median_s": samples_sorted[len(samples) // 2]}

    async def settle_nexus(self, session: aiohttp.ClientSession, name: str = "nexus") -> None:
        url = f"http://{HOST}:{self.targets[name].port}"
        await wait_until(
            session, "GET", url + "/health", ok=lambda d: orjson.loads(d).get("status") == "healthy"
        )
        await wait_until(session, "GET", url + "/v1/models", ok=lambda d: b'"bench-model"' in d)

    async def add_gateways(self, session: aiohttp.ClientSession) -> None:
        for i, url in enumerate(self.args.gateway_url, 1):
            target = gateway_target(i, url, self.args.gateway_key)
            base = f"http://{target.host}:{target.port}{target.prefix}"
            self.log(f"waiting for {target.name} = {base} to answer through the upstream ...")
            await wait_chat(session, base, self.cfg.chat_body, timeout=60, interval=0.2)
            self.targets[target.name] = target

    def memory(self) -> dict[str, Any]:
        return {n: {"pid": p.pid, "rss_mb": p.rss()} for n, p in self.measured.items()}

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        results: dict[str, Any] = {"meta": meta(self)}
        self.log(
            f"upstream: {self.upstream_url}  (models bench-model, bench-paced, bench-slow; "
            f"point other gateways here, see docs/benchmarks.md)"
        )
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await self.start_upstream(session)
            if self.args.baseline is not None:
                results["meta"]["baseline"].update(await baseline_origin(self.args.baseline))
            self.log("start-up ...")
            results["startup"] = await self.startup(session)
            if self.args.baseline is not None:
                results["startup"]["before"] = await self.startup(session, "before")
            await self.start_floor(session)
            await self.start_floor(session, "floor-asgi", "floor_asgi")
            for name in ("nexus", "before"):
                if name in self.measured:
                    await self.settle_nexus(session, name)
            await self.add_gateways(session)
        self.order_targets()
        results["targets"] = self.urls(set(self.targets) - set(REFERENCES))
        results["references"] = self.urls(REFERENCES)
        await asyncio.sleep(cfg.idle_settle)
        memory: dict[str, Any] = {n: {"idle_mb": p.rss()} for n, p in self.measured.items()}
        targets = list(self.targets.values())
        self.log("latency (sequential, interleaved) ...")
        results["latency"] = await phases.latency(targets, cfg)
        self.log("throughput ...")
        pids = {n: p.pid for n, p in self.measured.items()}
        results["throughput"] = await phases.throughput(targets, cfg, self.args.loadgen, pids)
        for name, proc in self.measured.items():
            memory[name]["after_load_mb"] = proc.rss()
        self.log("streaming ...")
        results["streaming"] = {
            "paced": await phases.streaming(targets, cfg, "bench-paced", cfg.stream_n),
            "burst": await phases.streaming(targets, cfg, "bench-model", cfg.burst_n),
        }
        self.log(f"{cfg.hold_conns} slow streams ...")
        memory["streams"] = {}
        for name, proc in self.measured.items():
            if name.startswith("floor") and not cfg.hold_floor:
                continue
            memory["streams"][name] = await phases.hold(self.targets[name], proc, cfg)
        results["memory"] = memory
        await self.stop()
        self.log("micro-benchmarks ...")
        results["micro"] = micro.run_all(self.args.quick)
        results["checks"] = report.checks(results)
        results["errors_total"] = phases.errors_total(results)
        return results

    def order_targets(self) -> None:
        """The references next to what they are compared with; the order is also the
        rotation order of the interleaved phases."""
        order = [
            n for n in ("direct", "floor", "floor-asgi", "nexus", "before") if n in self.targets
        ]
        self.targets = {n: self.targets[n] for n in order + sorted(set(self.targets) - {*order})}

    def urls(self, names: set[str] | tuple[str, ...]) -> dict[str, str]:
        return {
            n: f"http://{t.host}:{t.port}{t.prefix}" for n, t in self.targets.items() if n in names
        }

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop()
        self.procs.clear()

    def cleanup(self) -> None:
        if self.args.keep:
            self.log(f"run directory kept: {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def meta(bench: Bench) -> dict[str, Any]:
    import uvloop

    import nexus

    return {
        "command": " ".join([".venv/bin/python", "-m", "benchmarks.run", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nexus": nexus.__version__,
        "aiohttp": aiohttp.__version__,
        "uvloop": getattr(uvloop, "__version__", "?"),
        "quick": bench.args.quick,
        "upstream": bench.upstream_url,
        "settings": bench.cfg.to_dict(),
        **baseline_meta(bench.args.baseline),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(drive(Bench(args)))
    print(report.table(results))
    save(results, args.json, "bench")
    if results["errors_total"]:
        print(f"ERRORS: {results['errors_total']} failed requests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
