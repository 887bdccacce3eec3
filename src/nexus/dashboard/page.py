"""The dashboard's first paint, rendered on the server (and all there is without JavaScript).

Plain string building: every value that came from the network (backend and model names,
errors, addresses) goes through ``esc`` exactly once, at the point where it meets markup.
``static/dashboard.js`` renders the same structure (same classes) from the JSON snapshot, so
the live page looks exactly like this one.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable

from nexus.dashboard.live import Json, status_level

PALETTE = 8  # chart colours c0..c7 (see dashboard.css)
CHART_W, CHART_H = 300, 80
SPARK_W, SPARK_H = 120, 28


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


# -- formatting (mirrored in dashboard.js) -----------------------------------------------------


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "–"
    if ms < 1:
        return "<1 ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.1f} s" if ms < 60_000 else f"{ms / 60_000:.1f} min"


def fmt_ctx(n: int | None) -> str:
    if not n:
        return ""
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M".replace(".0M", "M")
    if n >= 1000:
        return f"{n / 1000:.0f}k"
    return str(n)


def fmt_ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    delta = max(0.0, now - ts)
    if delta < 2:
        return "just now"
    if delta < 60:
        return f"{delta:.0f} s ago"
    if delta < 3600:
        return f"{delta // 60:.0f} min ago"
    if delta < 86400:
        return f"{delta // 3600:.0f} h ago"
    return f"{delta // 86400:.0f} d ago"


def fmt_clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def time_tag(ts: float | None, now: float, *, relative: bool = True) -> str:
    if not ts:
        return "<span>never</span>"
    text = fmt_ago(ts, now) if relative else fmt_clock(ts)
    cls = ' class="ago"' if relative else ""
    return f'<time{cls} datetime="{iso(ts)}" data-ts="{ts:.3f}">{esc(text)}</time>'


# -- charts (inline SVG; geometry mirrored in dashboard.js) -------------------------------------


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def dense(points: Iterable[list[float]], end: int, buckets: int) -> list[list[float] | None]:
    """Sparse [bucket, requests, errors, avg ms] points -> one slot per bucket, oldest first."""
    slots: list[list[float] | None] = [None] * buckets
    start = end - buckets + 1
    for p in points:
        i = int(p[0]) - start
        if 0 <= i < buckets:
            slots[i] = p
    return slots


def bars_svg(
    slots: list[list[float] | None], w: int, h: int, label: str, *, grid: bool = False
) -> str:
    peak = max((p[1] for p in slots if p), default=0) or 1
    step = w / len(slots)
    gap = step * 0.2 if step > 2 else 0
    parts = []
    for i, p in enumerate(slots):
        if not p:
            continue
        x = i * step
        total_h = max(1.0, p[1] / peak * (h - 2))
        err_h = p[2] / peak * (h - 2) if p[2] else 0
        parts.append(
            f'<rect class="bar" x="{_num(x)}" y="{_num(h - total_h)}" '
            f'width="{_num(step - gap)}" height="{_num(total_h)}"/>'
        )
        if err_h:
            parts.append(
                f'<rect class="bar-err" x="{_num(x)}" y="{_num(h - err_h)}" '
                f'width="{_num(step - gap)}" height="{_num(err_h)}"/>'
            )
    return _svg(w, h, label, "".join(parts), grid=grid)


def line_path(slots: list[list[float] | None], w: int, h: int, peak: float) -> tuple[str, str]:
    """(the line through consecutive points, dots for points with no neighbour)."""
    step = w / len(slots)
    d: list[str] = []
    dots: list[str] = []
    for i, p in enumerate(slots):
        if not p:
            continue
        x = i * step + step / 2
        y = h - 2 - p[3] / peak * (h - 4)
        joined = i > 0 and slots[i - 1] is not None
        d.append(f"L{_num(x)} {_num(y)}" if joined else f"M{_num(x)} {_num(y)}")
        if not joined and (i + 1 >= len(slots) or slots[i + 1] is None):
            dots.append(f"M{_num(x)} {_num(y)}h0.01")
    return "".join(d), "".join(dots)


def lines_svg(
    series: list[tuple[int, list[list[float] | None]]],
    w: int,
    h: int,
    label: str,
    *,
    grid: bool = False,
) -> str:
    peak = max((p[3] for _, slots in series for p in slots if p), default=0) or 1
    paths = []
    for color, slots in series:
        if not any(slots):
            continue
        line, dots = line_path(slots, w, h, peak)
        if line:
            paths.append(f'<path class="line c{color % PALETTE}" d="{line}"/>')
        if dots:
            paths.append(f'<path class="line dots c{color % PALETTE}" d="{dots}"/>')
    return _svg(w, h, label, "".join(paths), grid=grid)


def _svg(w: int, h: int, label: str, body: str, *, grid: bool = False) -> str:
    lines = "".join(
        f'<line class="grid" x1="0" y1="{_num(y)}" x2="{w}" y2="{_num(y)}"/>'
        for y in ((h - 2) / 4, (h - 2) / 2, (h - 2) * 3 / 4)
        if grid
    )
    return (
        f'<svg class="chart" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" '
        f'aria-label="{esc(label)}">{lines}<line class="axis" x1="0" y1="{h - 0.5}" x2="{w}" '
        f'y2="{h - 0.5}"/>{body}</svg>'
    )


def peak_label(slots: list[list[float] | None], index: int) -> float:
    return max((p[index] for p in slots if p), default=0)


# -- sections ---------------------------------------------------------------------------------


def colors(backends: list[Json]) -> dict[str, int]:
    """Chart colour per backend name: stable for a given set of names."""
    return {name: i for i, name in enumerate(sorted({b["name"] for b in backends}))}


def summary(snap: Json) -> str:
    backends = snap["backends"]
    healthy = sum(1 for b in backends if b["status"] == "healthy")
    models = {m["id"] for b in backends for m in b["models"]}
    points = snap["charts"]["all"]
    requests = sum(int(p[1]) for p in points)
    errors = sum(int(p[2]) for p in points)
    weighted = sum(p[1] * p[3] for p in points)
    avg = weighted / requests if requests else None
    pending = sum(b["pending"] for b in backends)
    level = "ok" if backends and healthy == len(backends) else ("bad" if not healthy else "warn")
    tiles = [
        ("backends", f"{healthy}/{len(backends)}", "backends healthy", level),
        ("models", str(len(models)), "models available", ""),
        ("requests", str(requests), f"requests, 10 min · {errors} failed", "bad" if errors else ""),
        ("latency", fmt_ms(avg), "avg latency, 10 min", ""),
        ("inflight", str(pending), "in flight", ""),
        ("uptime", fmt_duration(snap["uptime"]), "uptime", ""),
    ]
    if (budget := snap.get("budget")) is not None:
        level = {"hard-limit": "bad", "soft-limit": "warn"}.get(budget["status"], "")
        spent = f"${budget['spent']:.2f} / ${budget['limit']:.2f}"
        tiles.insert(4, ("budget", spent, f"cloud budget · {budget['status']}", level))
    if (queued := snap.get("queued")) is not None:
        tiles.insert(5, ("queued", str(queued), "waiting in queue", "warn" if queued else ""))
    return "".join(
        f'<div class="tile{" lvl-" + lvl if lvl else ""}" data-tile="{key}">'
        f'<span class="tile-value">{esc(value)}</span>'
        f'<span class="tile-label">{esc(label)}</span></div>'
        for key, value, label, lvl in tiles
    )


def notices(items: list[Json], now: float) -> str:
    return "".join(
        f'<li class="notice lvl-{esc(n["level"])}">{time_tag(n["ts"], now, relative=False)} '
        f'<span class="notice-text">{esc(n["text"])}</span></li>'
        for n in reversed(items[-5:])
    )


def traffic(snap: Json, palette: dict[str, int]) -> str:
    charts = snap["charts"]
    end, n = charts["end"], charts["buckets"]
    total = dense(charts["all"], end, n)
    per = [
        (palette.get(name, 0), dense(points, end, n))
        for name, points in sorted(charts["backends"].items())
    ]
    legend = "".join(
        f'<li><span class="swatch c{palette.get(name, 0) % PALETTE}"></span>{esc(name)}</li>'
        for name in sorted(set(palette) | set(charts["backends"]))
    )
    peak_req = peak_label(total, 1)
    peak_ms = max((peak_label(s, 3) for _, s in per), default=0)
    window = f"{n * charts['bucket_seconds'] // 60} min"
    return (
        '<div class="charts">'
        '<figure class="chart-box">'
        f"<figcaption><span>Requests per {charts['bucket_seconds']} s</span>"
        f'<span class="peak" data-peak="requests">max {peak_req:.0f}</span></figcaption>'
        f"{bars_svg(total, CHART_W, CHART_H, 'Requests over the last ' + window, grid=True)}"
        f'<div class="axis-labels"><span>-{window}</span><span>now</span></div></figure>'
        '<figure class="chart-box">'
        "<figcaption><span>Average latency per backend</span>"
        f'<span class="peak" data-peak="latency">max {esc(fmt_ms(peak_ms or None))}</span>'
        "</figcaption>"
        f"{lines_svg(per, CHART_W, CHART_H, 'Latency per backend, last ' + window, grid=True)}"
        f'<div class="axis-labels"><span>-{window}</span><span>now</span></div></figure>'
        "</div>"
        f'<ul class="legend">{legend}</ul>'
    )


def backend_card(b: Json, charts: Json, color: int, now: float) -> str:
    lvl = status_level(b["status"])
    end, n = charts["end"], charts["buckets"]
    slots = dense(charts["backends"].get(b["name"], []), end, n)
    failed = f" <small>({b['failed']} failed)</small>" if b["failed"] else ""
    models = "".join(f"<li>{esc(m['id'])}</li>" for m in b["models"]) or (
        '<li class="none">no models</li>'
    )
    error = (
        f'<p class="last-error"><span>Last error:</span> {esc(b["last_error"])}</p>'
        if b["last_error"]
        else ""
    )
    return (
        f'<article class="card lvl-{lvl}" data-id="{esc(b["id"])}">'
        '<div class="card-head"><span class="dot" aria-hidden="true"></span>'
        f'<h3 class="name">{esc(b["name"])}</h3>'
        f'<span class="badge">{esc(b["status"])}</span></div>'
        f'<p class="meta"><span>{esc(b["type"])}</span><span>{esc(b["address"])}</span>'
        f"<span>{esc(b['source'])}</span></p>"
        '<dl class="stats">'
        f"<div><dt>In flight</dt><dd>{b['pending']}</dd></div>"
        f"<div><dt>Latency</dt><dd>{esc(fmt_ms(b['avg_ms'] or None))}</dd></div>"
        f"<div><dt>Requests</dt><dd>{b['total']}{failed}</dd></div>"
        f"<div><dt>Checked</dt><dd>{time_tag(b['last_check'], now)}</dd></div>"
        "</dl>"
        '<div class="sparks">'
        f'<figure class="spark"><figcaption>req / {charts["bucket_seconds"]} s</figcaption>'
        f"{bars_svg(slots, SPARK_W, SPARK_H, 'Requests to ' + b['name'])}</figure>"
        f'<figure class="spark c{color % PALETTE}"><figcaption>latency</figcaption>'
        f"{lines_svg([(color, slots)], SPARK_W, SPARK_H, 'Latency of ' + b['name'])}</figure>"
        "</div>"
        f'<ul class="chips">{models}</ul>{error}</article>'
    )


def backends_section(snap: Json, palette: dict[str, int], now: float) -> str:
    cards = [
        backend_card(b, snap["charts"], palette.get(b["name"], 0), now)
        for b in sorted(snap["backends"], key=lambda b: b["name"])
    ]
    return "".join(cards) or '<p class="empty">No backends configured or discovered yet.</p>'


CAPS = ("vision", "tools", "json")


def cap_tags(m: Json) -> str:
    tags = []
    for key in CAPS:
        value = m.get(key)
        state = "on" if value else ("unk" if value is None else "off")
        word = {"on": "yes", "off": "no", "unk": "unknown"}[state]
        tags.append(f'<span class="cap cap-{state}" title="{key}: {word}">{key}</span>')
    if m.get("embeddings"):
        tags.append('<span class="cap cap-on" title="embeddings: yes">embed</span>')
    return "".join(tags)


def matrix(backends: list[Json]) -> str:
    cols = sorted(backends, key=lambda b: b["name"])
    rows: dict[str, dict[str, Json]] = {}
    for b in cols:
        for m in b["models"]:
            rows.setdefault(m["id"], {})[b["id"]] = m
    if not rows:
        return '<p class="empty">No models yet: backends list them once they are healthy.</p>'
    head = "".join(
        f'<th scope="col" class="lvl-{status_level(b["status"])}">'
        f'<span class="dot" aria-hidden="true"></span>{esc(b["name"])}</th>'
        for b in cols
    )
    body = []
    for model_id in sorted(rows):
        cells = []
        for b in cols:
            m = rows[model_id].get(b["id"])
            if m is None:
                cells.append('<td class="absent"><span aria-label="not served">–</span></td>')
                continue
            ctx = fmt_ctx(m["ctx"])
            ctx_html = f'<span class="ctx">{esc(ctx)} ctx</span>' if ctx else ""
            cells.append(
                f'<td class="present lvl-{status_level(b["status"])}" '
                f'data-backend="{esc(b["name"])}">'
                f'<span class="tick" aria-label="served">✓</span>{ctx_html}'
                f'<span class="caps">{cap_tags(m)}</span></td>'
            )
        body.append(f'<tr><th scope="row">{esc(model_id)}</th>{"".join(cells)}</tr>')
    return (
        '<div class="scroll-x"><table class="matrix">'
        f'<thead><tr><th scope="col">Model</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def history_row(e: Json) -> str:
    failed = bool(e["error_type"]) or e["status"] >= 400
    model = esc(e["model"] or "–")
    if e["routed_model"] and e["routed_model"] != e["model"]:
        model += f' <span class="routed">→ {esc(e["routed_model"])}</span>'
    tags = []
    if e["stream"]:
        tags.append('<span class="tag">stream</span>')
    if e["endpoint"] != "chat":
        tags.append(f'<span class="tag">{esc(e["endpoint"])}</span>')
    if e["retries"]:
        tags.append(
            f'<span class="tag">{e["retries"]} retr{"y" if e["retries"] == 1 else "ies"}</span>'
        )
    tokens = ""
    if e["tokens_in"] is not None or e["tokens_out"] is not None:
        tokens = f"{e['tokens_in'] or 0}→{e['tokens_out'] or 0} tok"
    row = (
        f"{time_tag(e['ts'], 0, relative=False)}"
        f'<span class="h-model">{model}</span>'
        f'<span class="h-backend">{esc(e["backend"] or "–")}</span>'
        f'<span class="h-status"><span class="code">{e["status"] or "–"}</span></span>'
        f'<span class="h-dur">{esc(fmt_ms(e["ms"]))}</span>'
        f'<span class="h-tags">{"".join(tags)}<span class="tok">{esc(tokens)}</span></span>'
    )
    if not failed:
        return f'<li class="req lvl-ok" data-seq="{e["seq"]}"><div class="row">{row}</div></li>'
    details = [
        ("Error", e["error_type"] or f"HTTP {e['status']}"),
        ("Message", e["error"] or "–"),
        ("Request id", e["id"]),
        ("Route", e["reason"] or "–"),
        ("Fallbacks", " → ".join(e["chain"]) or "–"),
        ("Time to first token", fmt_ms(e["ttft_ms"])),
    ]
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in details)
    return (
        f'<li class="req lvl-bad" data-seq="{e["seq"]}"><details>'
        f'<summary class="row">{row}</summary><dl class="err">{dl}</dl></details></li>'
    )


def fleet(view: Json | None) -> str:
    """Recommendations first (something to decide), then the last operations, newest first."""
    if not view:
        return ""
    rows = [
        f'<li class="rec"><span class="tag">recommended</span> {esc(r["reason"])} '
        f'<span class="sub">confidence {r["confidence"]:.0%} · nexus fleet apply '
        f"{esc(r['id'])}</span></li>"
        for r in view["recommendations"]
    ]
    for op in reversed(view["operations"]):
        detail = op["reason"] or op["step"]
        rows.append(
            f'<li class="op lvl-{_op_level(op["state"])}"><span class="tag">{esc(op["state"])}'
            f"</span> {esc(op['what'])}{' · ' + esc(detail) if detail else ''}</li>"
        )
    return "".join(rows)


def _op_level(state: str) -> str:
    return {"succeeded": "ok", "failed": "bad"}.get(state, "warn")


def history(entries: list[Json]) -> str:
    rows = "".join(history_row(e) for e in reversed(entries))
    return rows or '<li class="empty">No requests yet. They appear here as they finish.</li>'


LOGO = (
    '<svg class="logo" viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="12" r="3"/>'
    '<circle cx="4" cy="5" r="2"/><circle cx="20" cy="5" r="2"/><circle cx="4" cy="19" r="2"/>'
    '<circle cx="20" cy="19" r="2"/><path d="M6 6.5l4 4M18 6.5l-4 4M6 17.5l4-4M18 17.5l-4-4"/>'
    "</svg>"
)


def render(snap: Json, *, assets: dict[str, str]) -> str:
    """The whole page. ``assets`` maps asset names to their cache-busting URLs."""
    now = snap["now"]
    palette = colors(snap["backends"])
    backends = snap["backends"]
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<noscript><meta http-equiv="refresh" content="10"></noscript>
<title>Nexus · dashboard</title>
<link rel="icon" type="image/svg+xml" href="{esc(assets["favicon.svg"])}">
<link rel="stylesheet" href="{esc(assets["dashboard.css"])}">
<script src="{esc(assets["dashboard.js"])}" defer></script>
</head>
<body>
<header class="top">
<a class="brand" href="/">{LOGO}<span>Nexus</span></a>
<span class="version">v{esc(snap["version"])}</span>
<span class="spacer"></span>
<span id="conn" class="conn" role="status" data-state="static">
<span class="conn-dot" aria-hidden="true"></span><span class="conn-text">as of {
        esc(fmt_clock(now))
    }</span></span>
<a class="refresh" href="/">Refresh</a>
</header>
<main>
<section class="summary" id="summary" aria-label="Summary">{summary(snap)}</section>
<section class="notices" id="notices" aria-label="Status changes" aria-live="polite"{
        "" if snap["notices"] else " hidden"
    }><ol id="notice-list">{notices(snap["notices"], now)}</ol></section>
<section class="panel" id="traffic-panel" aria-labelledby="h-traffic">
<h2 id="h-traffic">Traffic <span class="sub">last {
        snap["charts"]["buckets"] * snap["charts"]["bucket_seconds"] // 60
    } minutes</span></h2>
<div id="traffic">{traffic(snap, palette)}</div>
</section>
<section class="panel" aria-labelledby="h-backends">
<h2 id="h-backends">Backends <span class="count" id="backend-count">{len(backends)}</span></h2>
<div class="cards" id="backends">{backends_section(snap, palette, now)}</div>
</section>
<section class="panel" aria-labelledby="h-models">
<h2 id="h-models">Models <span class="sub">× backends</span></h2>
<div id="matrix">{matrix(backends)}</div>
</section>
<section class="panel" id="fleet-panel" aria-labelledby="h-fleet"{
        "" if snap.get("fleet") else " hidden"
    }>
<h2 id="h-fleet">Fleet <span class="sub">operations and recommendations</span></h2>
<ol class="fleet" id="fleet">{fleet(snap.get("fleet"))}</ol>
</section>
<section class="panel" aria-labelledby="h-history">
<h2 id="h-history">Recent requests <span class="sub">last 100</span></h2>
<div class="history-head" aria-hidden="true"><span>Time</span><span>Model</span>
<span>Backend</span><span>Status</span><span>Duration</span><span></span></div>
<ol class="history" id="history">{history(snap["history"])}</ol>
</section>
</main>
<footer><span>Nexus v{esc(snap["version"])}</span> · <a href="/dashboard.json">JSON</a>
 · <a href="/health">health</a></footer>
</body>
</html>
"""
