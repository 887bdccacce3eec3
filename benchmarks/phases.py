"""The measured phases of a run; each drives ``benchmarks.loadgen`` (or wrk) in a child
process and turns its raw samples into summaries."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from typing import Any

import orjson

from benchmarks import report, wrk
from benchmarks.loadgen import Target
from benchmarks.procs import Proc, child_env, cpu_seconds, run_json
from benchmarks.settings import Settings

LOADGEN = ["-m", "benchmarks.loadgen"]


def _spec(**fields: Any) -> str:
    return orjson.dumps(fields, default=_target).decode()


def _target(value: Any) -> Any:
    if isinstance(value, Target):
        return dataclasses.asdict(value)
    raise TypeError(type(value))


async def latency(targets: list[Target], cfg: Settings) -> dict[str, Any]:
    raw = await run_json(
        [
            *LOADGEN,
            _spec(
                mode="latency",
                targets=targets,
                n=cfg.latency_n,
                warmup=cfg.latency_warmup,
                body=cfg.chat_body,
            ),
        ],
        timeout=600,
    )
    per = {}
    for name, data in raw.items():
        per[name] = {**report.summary(data["us"]), "errors": data["errors"]}
    added = {}
    for t in targets:
        if t.name == "direct":
            continue
        added[t.name] = {
            key: report.minus(per[t.name][key], per["direct"][key])
            for key in ("p50_us", "p90_us", "p99_us", "mean_us")
        }
    headers = raw.get("nexus", {}).get("headers", {})
    return {
        "n": cfg.latency_n,
        "per_target": per,
        "added": added,
        "nexus_headers_ok": "x-nexus-backend" in headers and "x-request-id" in headers,
    }


async def _one_throughput(
    target: Target, cfg: Settings, conns: int, seconds: float, use_wrk: bool
) -> dict[str, Any]:
    if use_wrk:
        return await wrk.throughput(target, cfg.chat_body, conns, seconds)
    spec = _spec(
        mode="throughput",
        target=target,
        conns=conns,
        duration=seconds,
        warmup=0.3,
        body=cfg.chat_body,
    )
    result: dict[str, Any] = await run_json([*LOADGEN, spec], timeout=seconds + 60)
    return result


async def _measured(
    target: Target, cfg: Settings, conns: int, use_wrk: bool, pid: int | None
) -> dict[str, Any]:
    """One throughput run, plus the CPU time the target's process spent per request: on a
    shared machine this is steadier than req/s, which moves with everyone else's load."""
    before = cpu_seconds(pid) if pid else None
    result = await _one_throughput(target, cfg, conns, cfg.throughput_seconds, use_wrk)
    after = cpu_seconds(pid) if pid else None
    if before is not None and after is not None and result["requests"]:
        result["cpu_us_per_request"] = (after - before) / result["requests"] * 1e6
    return result


async def throughput(
    targets: list[Target], cfg: Settings, driver: str, pids: dict[str, int]
) -> dict[str, Any]:
    use_wrk = driver == "wrk" or (driver == "auto" and wrk.available())
    if driver == "wrk" and not wrk.available():
        raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {
        c: {t.name: [] for t in targets} for c in cfg.throughput_conns
    }
    for rep in range(cfg.throughput_reps):
        for conns in cfg.throughput_conns:
            shift = rep % len(targets)
            for target in targets[shift:] + targets[:shift]:
                if rep == 0 and cfg.throughput_warmup:
                    await _one_throughput(target, cfg, conns, cfg.throughput_warmup, use_wrk)
                runs[conns][target.name].append(
                    await _measured(target, cfg, conns, use_wrk, pids.get(target.name))
                )
    out: dict[str, Any] = {
        "driver": "wrk" if use_wrk else "python",
        "seconds": cfg.throughput_seconds,
        "reps": cfg.throughput_reps,
    }
    for conns, per in runs.items():
        out[str(conns)] = {
            name: {
                "rps": statistics.median(r["rps"] for r in rs),
                "runs_rps": [r["rps"] for r in rs],
                "cpu_us_per_request": _median_of(rs, "cpu_us_per_request"),
                "p50_us": statistics.median(r["p50_us"] or 0 for r in rs),
                "p99_us": statistics.median(r["p99_us"] or 0 for r in rs),
                "errors": {
                    "count": sum(r["errors"]["count"] for r in rs),
                    "samples": [s for r in rs for s in r["errors"]["samples"]][:5],
                },
            }
            for name, rs in per.items()
        }
    return out


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


async def streaming(targets: list[Target], cfg: Settings, model: str, n: int) -> dict[str, Any]:
    raw = await run_json(
        [
            *LOADGEN,
            _spec(
                mode="stream",
                targets=targets,
                n=n,
                warmup=cfg.stream_warmup,
                chunks=cfg.stream_chunks,
                body=cfg.stream_body(model),
            ),
        ],
        timeout=600,
    )
    per = {}
    for name, data in raw.items():
        first, last = report.summary(data["ttfc_us"]), report.summary(data["ttlc_us"])
        per[name] = {
            "n": first["n"],
            "ttfc_p50_us": first["p50_us"],
            "ttfc_p99_us": first["p99_us"],
            "ttlc_p50_us": last["p50_us"],
            "ttlc_p99_us": last["p99_us"],
            "errors": data["errors"],
        }
    added = {}
    for t in targets:
        if t.name == "direct":
            continue
        p, d, f = per[t.name], per["direct"], per["floor"]
        added[t.name] = {
            "ttfc_us": report.minus(p["ttfc_p50_us"], d["ttfc_p50_us"]),
            "ttlc_us": report.minus(p["ttlc_p50_us"], d["ttlc_p50_us"]),
            "ttfc_vs_floor_us": report.minus(p["ttfc_p50_us"], f["ttfc_p50_us"]),
            "ttlc_vs_floor_us": report.minus(p["ttlc_p50_us"], f["ttlc_p50_us"]),
        }
    return {"model": model, "chunks": cfg.stream_chunks, "per_target": per, "added": added}


async def hold(target: Target, proc: Proc, cfg: Settings) -> dict[str, Any]:
    """``hold_conns`` slow streams open at once through ``target``; peak RSS of ``proc``."""
    import sys

    spec = _spec(
        mode="hold",
        target=target,
        conns=cfg.hold_conns,
        chunks=cfg.hold_chunks,
        body=cfg.slow_body,
        timeout=cfg.hold_chunks * cfg.slow_delay + 30,
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        *LOADGEN,
        spec,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    communicate = asyncio.ensure_future(child.communicate())
    peak = 0.0
    deadline = time.monotonic() + cfg.hold_chunks * cfg.slow_delay + 60
    while not communicate.done() and time.monotonic() < deadline:
        peak = max(peak, proc.rss() or 0.0)
        await asyncio.wait({communicate}, timeout=0.1)
    if not communicate.done():
        child.kill()
    out, err = await communicate
    if child.returncode != 0:
        raise RuntimeError(f"hold load generator failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = orjson.loads(out)
    await asyncio.sleep(0.5)
    return {**result, "peak_mb": peak, "after_mb": proc.rss()}


def errors_total(results: dict[str, Any]) -> int:
    total: int = 0
    for section in (results["latency"], *results["streaming"].values()):
        total += sum(p["errors"]["count"] for p in section["per_target"].values())
    for key, per in results["throughput"].items():
        if key.isdigit():
            total += sum(p["errors"]["count"] for p in per.values())
    total += sum(int(s["errors"]["count"]) for s in results["memory"]["streams"].values())
    return total
