"""Statistics, target checks and the printed table of a benchmark run."""

from __future__ import annotations

import operator
import statistics
from collections.abc import Sequence
from typing import Any

BASES = ("direct", "floor")
# Table columns, in this order when present; others (gateways) follow.
COLUMNS = ("direct", "floor", "floor-asgi", "nexus", "before")
# The migration issue's targets, checked when a run has a "before" (``--baseline``).
BEFORE_CPU_RATIO = 0.75  # CPU per request @32, Nexus / before, at most
BEFORE_RPS_RATIO = 1.3  # req/s @32, Nexus / before, at least
IDLE_RSS_TARGET_MB = 45.0
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt}


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
    ok = None if value is None else OPS[op](value, limit)
    return {"name": name, "value": value, "limit": limit, "op": op, "unit": unit, "pass": ok}


def gateways(results: dict[str, Any]) -> list[str]:
    return [n for n in results["targets"] if n not in BASES]


def columns(results: dict[str, Any]) -> list[str]:
    """Every measured target: ``targets`` and the ``references`` (floor-asgi, before)."""
    names = [*results["targets"], *results.get("references", {})]
    return [n for n in COLUMNS if n in names] + [n for n in names if n not in COLUMNS]


def ratio_columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(numerator, denominator) of each ratio column: every gateway against the floor, then
    Nexus against the uvicorn floor and against "before" when they were measured."""
    pairs = [(g, "floor") for g in gateways(results)]
    refs = results.get("references", {})
    pairs += [("nexus", ref) for ref in ("floor-asgi", "before") if ref in refs]
    return pairs


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    lat, thr = results["latency"]["added"], results["throughput"]
    st = results["streaming"]["paced"]
    for gw in gateways(results):
        tag = "" if gw == "nexus" else f"[{gw}] "
        out.append(
            check(
                tag + "added latency p50 vs floor's",
                ratio(lat[gw]["p50_us"], lat["floor"]["p50_us"]),
                1.5,
                "<=",
                "x",
            )
        )
        out.append(
            check(
                tag + "added latency p99 vs floor's",
                ratio(lat[gw]["p99_us"], lat["floor"]["p99_us"]),
                2.0,
                "<=",
                "x",
            )
        )
        out.append(
            check(
                tag + "throughput @32 conns vs floor",
                ratio(thr["32"][gw]["rps"], thr["32"]["floor"]["rps"]),
                0.7,
                ">=",
                "x",
            )
        )
        out.append(
            check(
                tag + "paced stream: first chunk added (ms)",
                _ms(st["added"][gw]["ttfc_us"]),
                1.0,
                "<=",
                "ms",
            )
        )
    mem, micro = results["memory"], results["micro"]
    out.append(check("idle RSS (MB)", mem["nexus"]["idle_mb"], 50, "<=", "MB"))
    streams = mem["streams"]["nexus"]
    errors_ok = streams["errors"]["count"] == 0 and streams["max_open"] == streams["conns"]
    out.append(
        check(f"{streams['conns']} open streams: errors", streams["errors"]["count"], 0, "<=", "")
    )
    out[-1]["pass"] = errors_ok
    out.append(
        check(
            f"{streams['conns']} open streams: peak RSS (MB)", streams["peak_mb"], 120, "<=", "MB"
        )
    )
    out.append(
        check(
            "routing decision, 50 backends (µs)", micro["routing_50"]["median_us"], 50, "<=", "µs"
        )
    )
    metrics = micro["metrics"]
    out.append(check("metrics recording per request (µs)", metrics["median_us"], 20, "<=", "µs"))
    out.append(
        check(
            "start-up to first proxied request (s)", results["startup"]["median_s"], 1.0, "<=", "s"
        )
    )
    if "before" in results.get("references", {}):
        out += before_checks(results)
    return out


def before_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The migration issue's targets: Nexus against "before", measured in the same run."""
    lat, thr, mem = results["latency"]["added"], results["throughput"]["32"], results["memory"]
    streams = mem["streams"]["nexus"]
    out = [
        check(
            "vs before: CPU per request @32",
            ratio(thr["nexus"]["cpu_us_per_request"], thr["before"]["cpu_us_per_request"]),
            BEFORE_CPU_RATIO,
            "<=",
            "x",
        ),
        check(
            "vs before: added latency p50",
            ratio(lat["nexus"]["p50_us"], lat["before"]["p50_us"]),
            1.0,
            "<",
            "x",
        ),
        check(
            "vs before: throughput @32 conns",
            ratio(thr["nexus"]["rps"], thr["before"]["rps"]),
            BEFORE_RPS_RATIO,
            ">=",
            "x",
        ),
        check("vs before: idle RSS (MB)", mem["nexus"]["idle_mb"], IDLE_RSS_TARGET_MB, "<=", "MB"),
        check(
            f"vs before: {streams['conns']} held streams: errors",
            streams["errors"]["count"],
            0,
            "<=",
            "",
        ),
    ]
    # As in the check above: every stream must also have been open at the same time.
    out[-1]["pass"] = streams["errors"]["count"] == 0 and streams["max_open"] == streams["conns"]
    return out


def _baseline_line(results: dict[str, Any]) -> list[str]:
    base = results["meta"].get("baseline")
    if not base:
        return []
    return [f"before = nexus from {base['src']} (commit {base.get('commit') or '?'})", ""]


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    names = columns(results)
    pairs = ratio_columns(results)
    # A ratio column is as wide as its heading needs ("nexus/floor-asgi"), at least 14.
    widths = [max(14, len(a) + len(b) + 3) for a, b in pairs]
    head = (
        f"{'':34}"
        + "".join(f"{n:>12}" for n in names)
        + "".join(f"{a + '/' + b:>{w}}" for (a, b), w in zip(pairs, widths, strict=True))
    )
    lines = [*_baseline_line(results), head, "-" * len(head)]

    def row(label: str, values: dict[str, Any], digits: int = 0, ratios: bool = True) -> None:
        cells = "".join(f"{_fmt(values.get(n), digits):>12}" for n in names)
        if ratios:
            cells += "".join(
                f"{_fmt(ratio(values.get(a), values.get(b)), 2):>{w}}"
                for (a, b), w in zip(pairs, widths, strict=True)
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
            row(
                f"CPU per request @{conns} (µs)",
                {n: per[n].get("cpu_us_per_request") for n in names},
            )
    for kind, st in results["streaming"].items():
        per, added = st["per_target"], st["added"]
        row(f"{kind} stream first chunk p50 (µs)", {n: per[n]["ttfc_p50_us"] for n in names})
        row(f"{kind} stream last chunk p50 (µs)", {n: per[n]["ttlc_p50_us"] for n in names})
        row(
            f"{kind} stream first chunk added (µs)",
            {n: added.get(n, {}).get("ttfc_us") for n in names},
        )
        row(
            f"{kind} stream last chunk added (µs)",
            {n: added.get(n, {}).get("ttlc_us") for n in names},
        )
    mem = results["memory"]
    for key, label in (("idle_mb", "RSS idle (MB)"), ("after_load_mb", "RSS after load (MB)")):
        row(label, {n: mem.get(n, {}).get(key) for n in names}, 1)
    conns = mem["streams"]["nexus"]["conns"]
    row(
        f"RSS with {conns} streams (MB)",
        {n: mem["streams"].get(n, {}).get("peak_mb") for n in names},
        1,
    )
    startup = results["startup"]
    row(
        "start-up to first request (s)",
        {"nexus": startup["median_s"], "before": startup.get("before", {}).get("median_s")},
        3,
        "before" in startup,
    )
    micro = results["micro"]
    lines.append("")
    lines.append("micro-benchmarks (median of batches, µs per op):")
    for key, label in (
        ("routing_5", "routing, 5 backends x 200 models"),
        ("routing_50", "routing, 50 backends x 200 models"),
        ("sse", "SSE parse + event_data, per event"),
    ):
        lines.append(f"  {label:40}{_fmt(micro[key]['median_us'], 2):>10}")
    metrics = micro["metrics"]
    shown = _fmt(metrics["median_us"], 2)
    lines.append(f"  {'metrics record, per request':40}{shown:>10}")
    for key, label in (
        ("translate_anthropic", "OpenAI <-> Anthropic, per request"),
        ("translate_gemini", "OpenAI <-> Gemini, per request"),
        ("stream_anthropic", "Anthropic event -> chunk, per event"),
        ("stream_gemini", "Gemini event -> chunk, per event"),
        ("stream_openai", "OpenAI event relayed, per event"),
    ):
        if key in micro:  # results files from before the cloud backends lack them
            lines.append(f"  {label:40}{_fmt(micro[key]['median_us'], 2):>10}")
    lines.append("")
    lines.append("targets:")
    for c in results["checks"]:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[c["pass"]]
        lines.append(
            f"  {verdict}  {c['name']:48} {_fmt(c['value'], 3):>10}  "
            f"(target {c['op']} {c['limit']:g})"
        )
    return "\n".join(lines)
