"""Statistics, target checks and the printed table of a benchmark run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

BASES = ("direct", "floor")


def pct(samples: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``samples``."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "p50_us": pct(samples, 50),
        "p90_us": pct(samples, 90),
        "p99_us": pct(samples, 99),
        "mean_us": statistics.fmean(samples) if samples else None,
    }


def minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def check(name: str, value: float | None, limit: float, op: str, unit: str = "") -> dict[str, Any]:
    ok = None if value is None else (value <= limit if op == "<=" else value >= limit)
    return {"name": name, "value": value, "limit": limit, "op": op, "unit": unit, "pass": ok}


def gateways(results: dict[str, Any]) -> list[str]:
    return [n for n in results["targets"] if n not in BASES]


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    lat, thr = results["latency"]["added"], results["throughput"]
    st = results["streaming"]["paced"]
    for gw in gateways(results):
        tag = "" if gw == "nexus" else f"[{gw}] "
        out.append(check(tag + "added latency p50 vs floor's", ratio(
            lat[gw]["p50_us"], lat["floor"]["p50_us"]), 1.5, "<=", "x"))
        out.append(check(tag + "added latency p99 vs floor's", ratio(
            lat[gw]["p99_us"], lat["floor"]["p99_us"]), 2.0, "<=", "x"))
        out.append(check(tag + "throughput @32 conns vs floor", ratio(
            thr["32"][gw]["rps"], thr["32"]["floor"]["rps"]), 0.7, ">=", "x"))
        out.append(check(tag + "paced stream: first chunk added (ms)",
                         _ms(st["added"][gw]["ttfc_us"]), 1.0, "<=", "ms"))
    mem, micro = results["memory"], results["micro"]
    out.append(check("idle RSS (MB)", mem["nexus"]["idle_mb"], 50, "<=", "MB"))
    streams = mem["streams"]["nexus"]
    errors_ok = streams["errors"]["count"] == 0 and streams["max_open"] == streams["conns"]
    out.append(check(f"{streams['conns']} open streams: errors", streams["errors"]["count"],
                     0, "<=", ""))
    out[-1]["pass"] = errors_ok
    out.append(check(f"{streams['conns']} open streams: peak RSS (MB)", streams["peak_mb"],
                     120, "<=", "MB"))
    out.append(check("routing decision, 50 backends (µs)", micro["routing_50"]["median_us"],
                     50, "<=", "µs"))
    metrics = micro["metrics"]
    out.append(check("metrics recording per request (µs)",
                     metrics["median_us"],
                     20, "<=", "µs"))
    out.append(check("start-up to first proxied request (s)", results["startup"]["median_s"],
                     1.0, "<=", "s"))
    return out


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    names = list(results["targets"])
    gws = gateways(results)
    head = f"{'':34}" + "".join(f"{n:>12}" for n in names) + "".join(
        f"{n + '/floor':>14}" for n in gws
    )
    lines = [head, "-" * len(head)]

    def row(label: str, values: dict[str, Any], digits: int = 0, ratios: bool = True) -> None:
        cells = "".join(f"{_fmt(values.get(n), digits):>12}" for n in names)
        if ratios:
            cells += "".join(
                f"{_fmt(ratio(values.get(g), values.get('floor')), 2):>14}" for g in gws
            )
        lines.append(f"{label:34}{cells}")

    lat = results["latency"]
    for key in ("p50_us", "p99_us"):
        row(f"latency {key[:3]} (µs)", {n: lat["per_target"][n][key] for n in names})
    for key in ("p50_us", "p99_us"):
        row(f"added latency {key[:3]} (µs)", {n: lat["added"].get(n, {}).get(key) for n in names})
    for conns, per in results["throughput"].items():
        if conns.isdigit():
            row(f"throughput @{conns} conns (req/s)", {n: per[n]["rps"] for n in names})
    for conns, per in results["throughput"].items():
        if conns.isdigit():
            row(f"CPU per request @{conns} (µs)",
                {n: per[n].get("cpu_us_per_request") for n in names})
    for kind, st in results["streaming"].items():
        per, added = st["per_target"], st["added"]
        row(f"{kind} stream first chunk p50 (µs)", {n: per[n]["ttfc_p50_us"] for n in names})
        row(f"{kind} stream last chunk p50 (µs)", {n: per[n]["ttlc_p50_us"] for n in names})
        row(f"{kind} stream first chunk added (µs)",
            {n: added.get(n, {}).get("ttfc_us") for n in names})
        row(f"{kind} stream last chunk added (µs)",
            {n: added.get(n, {}).get("ttlc_us") for n in names})
    mem = results["memory"]
    for key, label in (("idle_mb", "RSS idle (MB)"), ("after_load_mb", "RSS after load (MB)")):
        row(label, {n: mem.get(n, {}).get(key) for n in names}, 1)
    conns = mem["streams"]["nexus"]["conns"]
    row(f"RSS with {conns} streams (MB)",
        {n: mem["streams"].get(n, {}).get("peak_mb") for n in names}, 1)
    row("start-up to first request (s)", {"nexus": results["startup"]["median_s"]}, 3, False)
    micro = results["micro"]
    lines.append("")
    lines.append("micro-benchmarks (median of batches, µs per op):")
    for key, label in (("routing_5", "routing, 5 backends x 200 models"),
                       ("routing_50", "routing, 50 backends x 200 models"),
                       ("sse", "SSE parse + event_data, per event")):
        lines.append(f"  {label:40}{_fmt(micro[key]['median_us'], 2):>10}")
    metrics = micro["metrics"]
    shown = _fmt(metrics["median_us"], 2)
    lines.append(f"  {'metrics record, per request':40}{shown:>10}")
    lines.append("")
    lines.append("targets:")
    for c in results["checks"]:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[c["pass"]]
        lines.append(f"  {verdict}  {c['name']:48} {_fmt(c['value'], 3):>10}  "
                     f"(target {c['op']} {c['limit']:g})")
    return "\n".join(lines)
