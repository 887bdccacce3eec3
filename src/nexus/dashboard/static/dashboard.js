// Nexus dashboard: live updates over WS /ws, falling back to polling /dashboard.json every 5 s.
// Renders the same markup as the server (src/nexus/dashboard/page.py). Data from the network
// (backend and model names, errors) only ever becomes text: Node.append / textContent /
// setAttribute. Never innerHTML.
(() => {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = 8;
  const CHART = [300, 80];
  const SPARK = [120, 28];
  const POLL_MS = 5000;
  const HISTORY = 100;

  const state = {
    backends: new Map(), // id -> view
    history: [], // oldest first
    notices: [],
    charts: null,
    seq: 0,
    version: "",
    uptimeAt: 0, // server uptime at clock() == uptimeClock
    uptimeClock: 0,
    offset: 0, // server clock - client clock, seconds
    queued: null, // requests waiting in the queue (null: no queue)
    budget: null, // {spent, limit, status} (null: no budget)
    fleet: null, // {operations, recommendations} (null: nothing to show)
  };

  // -- DOM helpers ------------------------------------------------------------------------------
  function setAttrs(node, attrs) {
    if (!attrs) return node;
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(key, String(value));
    }
    return node;
  }
  function h(tag, attrs, ...children) {
    const node = setAttrs(document.createElement(tag), attrs);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "object" ? child : String(child)); // strings become text
    }
    return node;
  }
  function s(tag, attrs) {
    return setAttrs(document.createElementNS(SVG_NS, tag), attrs);
  }
  function byId(id) {
    return document.getElementById(id);
  }
  function fill(id, ...children) {
    const node = byId(id);
    if (node) node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
    return node;
  }
  const now = () => Date.now() / 1000 + state.offset;

  // -- formatting (mirrors page.py) -------------------------------------------------------------
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1) return "<1 ms";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${(ms / 60000).toFixed(1)} min`;
  }
  function fmtCtx(n) {
    if (!n) return "";
    const M = 1024 * 1024;
    if (n >= M && n % M === 0) return `${n / M}M`;
    if (n >= 1024 && n % 1024 === 0) return `${n / 1024}k`;
    if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`.replace(".0M", "M");
    if (n >= 1000) return `${Math.round(n / 1000)}k`;
    return String(n);
  }
  function fmtAgo(ts) {
    if (!ts) return "never";
    const d = Math.max(0, now() - ts);
    if (d < 2) return "just now";
    if (d < 60) return `${Math.round(d)} s ago`;
    if (d < 3600) return `${Math.floor(d / 60)} min ago`;
    if (d < 86400) return `${Math.floor(d / 3600)} h ago`;
    return `${Math.floor(d / 86400)} d ago`;
  }
  const pad = (n) => String(n).padStart(2, "0");
  function fmtClock(ts) {
    const d = new Date(ts * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtDuration(sec) {
    const t = Math.floor(sec);
    if (t < 60) return `${t} s`;
    if (t < 3600) return `${Math.floor(t / 60)} min`;
    if (t < 86400) return `${Math.floor(t / 3600)} h ${Math.floor((t % 3600) / 60)} min`;
    return `${Math.floor(t / 86400)} d ${Math.floor((t % 86400) / 3600)} h`;
  }
  function level(status) {
    if (status === "healthy") return "ok";
    if (status === "unhealthy") return "bad";
    return "warn";
  }
  function timeTag(ts, relative) {
    if (!ts) return h("span", null, "never");
    return h(
      "time",
      { class: relative ? "ago" : null, datetime: new Date(ts * 1000).toISOString(), "data-ts": ts },
      relative ? fmtAgo(ts) : fmtClock(ts),
    );
  }

  // -- charts (inline SVG, geometry mirrors page.py) --------------------------------------------
  function dense(points, end, n) {
    const slots = new Array(n).fill(null);
    const start = end - n + 1;
    for (const p of points || []) {
      const i = p[0] - start;
      if (i >= 0 && i < n) slots[i] = p;
    }
    return slots;
  }
  const num = (x) => String(Math.round(x * 100) / 100);
  function chartSvg(w, hgt, label, grid) {
    const svg = s("svg", {
      class: "chart", viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: "none", role: "img",
      "aria-label": label,
    });
    if (grid) {
      for (const y of [(hgt - 2) / 4, (hgt - 2) / 2, ((hgt - 2) * 3) / 4]) {
        svg.append(s("line", { class: "grid", x1: 0, y1: num(y), x2: w, y2: num(y) }));
      }
    }
    svg.append(s("line", { class: "axis", x1: 0, y1: hgt - 0.5, x2: w, y2: hgt - 0.5 }));
    return svg;
  }
  function barsSvg(slots, [w, hgt], label, grid) {
    const svg = chartSvg(w, hgt, label, grid);
    const peak = Math.max(0, ...slots.map((p) => (p ? p[1] : 0))) || 1;
    const step = w / slots.length;
    const gap = step > 2 ? step * 0.2 : 0;
    slots.forEach((p, i) => {
      if (!p) return;
      const x = i * step;
      const total = Math.max(1, (p[1] / peak) * (hgt - 2));
      svg.append(s("rect", { class: "bar", x: num(x), y: num(hgt - total), width: num(step - gap), height: num(total) }));
      if (p[2]) {
        const err = (p[2] / peak) * (hgt - 2);
        svg.append(s("rect", { class: "bar-err", x: num(x), y: num(hgt - err), width: num(step - gap), height: num(err) }));
      }
    });
    return svg;
  }
  // [the line through consecutive points, dots for points with no neighbour]
  function linePath(slots, w, hgt, peak) {
    const step = w / slots.length;
    let d = "";
    let dots = "";
    slots.forEach((p, i) => {
      if (!p) return;
      const x = num(i * step + step / 2);
      const y = num(hgt - 2 - (p[3] / peak) * (hgt - 4));
      const joined = i > 0 && slots[i - 1] !== null;
      d += joined ? `L${x} ${y}` : `M${x} ${y}`;
      if (!joined && (i + 1 >= slots.length || slots[i + 1] === null)) dots += `M${x} ${y}h0.01`;
    });
    return [d, dots];
  }
  function linesSvg(series, [w, hgt], label, grid) {
    const svg = chartSvg(w, hgt, label, grid);
    let peak = 0;
    for (const [, slots] of series) for (const p of slots) if (p && p[3] > peak) peak = p[3];
    peak = peak || 1;
    for (const [color, slots] of series) {
      if (!slots.some(Boolean)) continue;
      const [line, dots] = linePath(slots, w, hgt, peak);
      if (line) svg.append(s("path", { class: `line c${color % PALETTE}`, d: line }));
      if (dots) svg.append(s("path", { class: `line dots c${color % PALETTE}`, d: dots }));
    }
    return svg;
  }

  // -- sections ---------------------------------------------------------------------------------
  function sortedBackends() {
    return [...state.backends.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
  function palette() {
    const names = [...new Set(sortedBackends().map((b) => b.name))].sort();
    return new Map(names.map((n, i) => [n, i]));
  }

  function renderSummary() {
    const backends = [...state.backends.values()];
    const healthy = backends.filter((b) => b.status === "healthy").length;
    const models = new Set(backends.flatMap((b) => b.models.map((m) => m.id)));
    const points = state.charts ? state.charts.all : [];
    const requests = points.reduce((a, p) => a + p[1], 0);
    const errors = points.reduce((a, p) => a + p[2], 0);
    const weighted = points.reduce((a, p) => a + p[1] * p[3], 0);
    const pending = backends.reduce((a, b) => a + b.pending, 0);
    const lvl = backends.length && healthy === backends.length ? "ok" : healthy ? "warn" : "bad";
    const uptime = state.uptimeAt + (Date.now() / 1000 - state.uptimeClock);
    const tiles = [
      ["backends", `${healthy}/${backends.length}`, "backends healthy", lvl],
      ["models", String(models.size), "models available", ""],
      ["requests", String(requests), `requests, 10 min · ${errors} failed`, errors ? "bad" : ""],
      ["latency", fmtMs(requests ? weighted / requests : null), "avg latency, 10 min", ""],
      ["inflight", String(pending), "in flight", ""],
      ["uptime", fmtDuration(uptime), "uptime", ""],
    ];
    if (state.budget) {
      const b = state.budget;
      const lvlB = b.status === "hard-limit" ? "bad" : b.status === "soft-limit" ? "warn" : "";
      tiles.splice(4, 0, ["budget", `$${b.spent.toFixed(2)} / $${b.limit.toFixed(2)}`, `cloud budget · ${b.status}`, lvlB]);
    }
    if (state.queued !== null && state.queued !== undefined) {
      tiles.splice(5, 0, ["queued", String(state.queued), "waiting in queue", state.queued ? "warn" : ""]);
    }
    fill(
      "summary",
      tiles.map(([key, value, label, l]) =>
        h("div", { class: l ? `tile lvl-${l}` : "tile", "data-tile": key },
          h("span", { class: "tile-value" }, value), h("span", { class: "tile-label" }, label)),
      ),
    );
    document.title = `Nexus · ${healthy}/${backends.length} healthy`;
  }

  function renderNotices(fresh) {
    const section = byId("notices");
    if (!section) return;
    section.hidden = state.notices.length === 0;
    fill(
      "notice-list",
      state.notices.slice(-5).reverse().map((n) =>
        h("li", { class: `notice lvl-${n.level}${fresh && fresh.has(n) ? " fresh" : ""}` },
          timeTag(n.ts, false), " ", h("span", { class: "notice-text" }, n.text)),
      ),
    );
  }

  function renderTraffic() {
    const c = state.charts;
    if (!c) return;
    const colors = palette();
    const total = dense(c.all, c.end, c.buckets);
    const names = Object.keys(c.backends).sort();
    const per = names.map((name) => [colors.get(name) || 0, dense(c.backends[name], c.end, c.buckets)]);
    const peakReq = Math.max(0, ...total.map((p) => (p ? p[1] : 0)));
    let peakMs = 0;
    for (const [, slots] of per) for (const p of slots) if (p && p[3] > peakMs) peakMs = p[3];
    const windowText = `${Math.floor((c.buckets * c.bucket_seconds) / 60)} min`;
    const axis = () => h("div", { class: "axis-labels" }, h("span", null, `-${windowText}`), h("span", null, "now"));
    fill(
      "traffic",
      h("div", { class: "charts" },
        h("figure", { class: "chart-box" },
          h("figcaption", null, h("span", null, `Requests per ${c.bucket_seconds} s`),
            h("span", { class: "peak", "data-peak": "requests" }, `max ${peakReq}`)),
          barsSvg(total, CHART, `Requests over the last ${windowText}`, true), axis()),
        h("figure", { class: "chart-box" },
          h("figcaption", null, h("span", null, "Average latency per backend"),
            h("span", { class: "peak", "data-peak": "latency" }, `max ${fmtMs(peakMs || null)}`)),
          linesSvg(per, CHART, `Latency per backend, last ${windowText}`, true), axis())),
      h("ul", { class: "legend" },
        [...new Set([...colors.keys(), ...names])].sort().map((name) =>
          h("li", null, h("span", { class: `swatch c${(colors.get(name) || 0) % PALETTE}` }), name))),
    );
  }

  function backendCard(b, color) {
    const c = state.charts || { end: 0, buckets: 60, bucket_seconds: 10, backends: {} };
    const slots = dense(c.backends[b.name] || [], c.end, c.buckets);
    const models = b.models.length
      ? b.models.map((m) => h("li", null, m.id))
      : [h("li", { class: "none" }, "no models")];
    return h("article", { class: `card lvl-${level(b.status)}`, "data-id": b.id },
      h("div", { class: "card-head" },
        h("span", { class: "dot", "aria-hidden": "true" }),
        h("h3", { class: "name" }, b.name),
        h("span", { class: "badge" }, b.status)),
      h("p", { class: "meta" }, h("span", null, b.type), h("span", null, b.address), h("span", null, b.source),
        h("span", { class: `zone zone-${b.zone === "open" ? "open" : "restricted"}` }, b.zone),
        h("span", { class: "tier" }, `tier ${b.tier}`)),
      h("dl", { class: "stats" },
        h("div", null, h("dt", null, "In flight"), h("dd", null, String(b.pending))),
        h("div", null, h("dt", null, "Latency"), h("dd", null, fmtMs(b.avg_ms || null))),
        h("div", null, h("dt", null, "Requests"),
          h("dd", null, String(b.total), b.failed ? [" ", h("small", null, `(${b.failed} failed)`)] : null)),
        h("div", null, h("dt", null, "Checked"), h("dd", null, timeTag(b.last_check, true)))),
      h("div", { class: "sparks" },
        h("figure", { class: "spark" }, h("figcaption", null, `req / ${c.bucket_seconds} s`),
          barsSvg(slots, SPARK, `Requests to ${b.name}`)),
        h("figure", { class: `spark c${color % PALETTE}` }, h("figcaption", null, "latency"),
          linesSvg([[color, slots]], SPARK, `Latency of ${b.name}`))),
      h("ul", { class: "chips" }, models),
      b.last_error ? h("p", { class: "last-error" }, h("span", null, "Last error:"), " ", b.last_error) : null,
    );
  }

  function renderBackends() {
    const colors = palette();
    const list = sortedBackends();
    fill("backend-count", String(list.length));
    fill(
      "backends",
      list.length
        ? list.map((b) => backendCard(b, colors.get(b.name) || 0))
        : [h("p", { class: "empty" }, "No backends configured or discovered yet.")],
    );
  }

  const CAPS = ["vision", "tools", "json"];
  function capTags(m) {
    const tags = CAPS.map((key) => {
      const v = m[key];
      const st = v ? "on" : v === null || v === undefined ? "unk" : "off";
      const word = { on: "yes", off: "no", unk: "unknown" }[st];
      return h("span", { class: `cap cap-${st}`, title: `${key}: ${word}` }, key);
    });
    if (m.embeddings) tags.push(h("span", { class: "cap cap-on", title: "embeddings: yes" }, "embed"));
    return tags;
  }

  function renderMatrix() {
    const cols = sortedBackends();
    const rows = new Map();
    for (const b of cols) for (const m of b.models) {
      if (!rows.has(m.id)) rows.set(m.id, new Map());
      rows.get(m.id).set(b.id, m);
    }
    if (!rows.size) {
      fill("matrix", h("p", { class: "empty" }, "No models yet: backends list them once they are healthy."));
      return;
    }
    const ids = [...rows.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const body = ids.map((id) =>
      h("tr", null, h("th", { scope: "row" }, id),
        cols.map((b) => {
          const m = rows.get(id).get(b.id);
          if (!m) return h("td", { class: "absent" }, h("span", { "aria-label": "not served" }, "–"));
          const ctx = fmtCtx(m.ctx);
          return h("td", { class: `present lvl-${level(b.status)}`, "data-backend": b.name },
            h("span", { class: "tick", "aria-label": "served" }, "✓"),
            ctx ? h("span", { class: "ctx" }, `${ctx} ctx`) : null,
            h("span", { class: "caps" }, capTags(m)));
        })),
    );
    fill("matrix",
      h("div", { class: "scroll-x" },
        h("table", { class: "matrix" },
          h("thead", null, h("tr", null, h("th", { scope: "col" }, "Model"),
            cols.map((b) => h("th", { scope: "col", class: `lvl-${level(b.status)}` },
              h("span", { class: "dot", "aria-hidden": "true" }), b.name)))),
          h("tbody", null, body))));
  }

  function historyRow(e, fresh) {
    const failed = Boolean(e.error_type) || e.status >= 400;
    const model = [e.model || "–"];
    if (e.routed_model && e.routed_model !== e.model) {
      model.push(" ", h("span", { class: "routed" }, `→ ${e.routed_model}`));
    }
    const tags = [];
    if (e.stream) tags.push(h("span", { class: "tag" }, "stream"));
    if (e.endpoint !== "chat") tags.push(h("span", { class: "tag" }, e.endpoint));
    if (e.retries) tags.push(h("span", { class: "tag" }, `${e.retries} retr${e.retries === 1 ? "y" : "ies"}`));
    if (e.queued_ms !== null && e.queued_ms !== undefined) tags.push(h("span", { class: "tag" }, `queued ${fmtMs(e.queued_ms)}`));
    let tokens = "";
    if (e.tokens_in !== null || e.tokens_out !== null) tokens = `${e.tokens_in || 0}→${e.tokens_out || 0} tok`;
    const cells = () => [
      timeTag(e.ts, false),
      h("span", { class: "h-model" }, model),
      h("span", { class: "h-backend" }, e.backend || "–"),
      h("span", { class: "h-status" }, h("span", { class: "code" }, String(e.status || "–"))),
      h("span", { class: "h-dur" }, fmtMs(e.ms)),
      h("span", { class: "h-tags" }, tags, h("span", { class: "tok" }, tokens)),
    ];
    const cls = `req lvl-${failed ? "bad" : "ok"}${fresh ? " fresh" : ""}`;
    if (!failed) return h("li", { class: cls, "data-seq": e.seq }, h("div", { class: "row" }, cells()));
    const details = [
      ["Error", e.error_type || `HTTP ${e.status}`],
      ["Message", e.error || "–"],
      ["Request id", e.id],
      ["Route", e.reason || "–"],
      ["Fallbacks", (e.chain || []).join(" → ") || "–"],
      ["Time to first token", fmtMs(e.ttft_ms)],
    ];
    return h("li", { class: cls, "data-seq": e.seq },
      h("details", null, h("summary", { class: "row" }, cells()),
        h("dl", { class: "err" }, details.map(([k, v]) => h("div", null, h("dt", null, k), h("dd", null, v))))));
  }

  function renderHistory() {
    const rows = state.history.slice().reverse().map((e) => historyRow(e, false));
    fill("history", rows.length ? rows : [h("li", { class: "empty" }, "No requests yet. They appear here as they finish.")]);
  }

  function addHistory(entries) {
    const list = byId("history");
    const fresh = entries.filter((e) => e.seq > state.seq).sort((a, b) => a.seq - b.seq);
    if (!fresh.length || !list) return;
    for (const e of fresh) state.history.push(e);
    state.seq = fresh[fresh.length - 1].seq;
    if (state.history.length > HISTORY) state.history.splice(0, state.history.length - HISTORY);
    const empty = list.querySelector(":scope > li.empty");
    if (empty) empty.remove();
    for (const e of fresh) list.prepend(historyRow(e, true));
    while (list.children.length > HISTORY) list.lastElementChild.remove();
  }

  function renderFleet() {
    const view = state.fleet;
    const panel = byId("fleet-panel");
    if (panel) panel.hidden = !view;
    if (!view) return;
    const rows = view.recommendations.map((r) =>
      h("li", { class: "rec" }, h("span", { class: "tag" }, "recommended"), " ", r.reason, " ",
        h("span", { class: "sub" }, `confidence ${Math.round(r.confidence * 100)}% · nexus fleet apply ${r.id}`)));
    for (const op of view.operations.slice().reverse()) {
      const lvl = op.state === "succeeded" ? "ok" : op.state === "failed" ? "bad" : "warn";
      const detail = op.reason || op.step;
      rows.push(h("li", { class: `op lvl-${lvl}` }, h("span", { class: "tag" }, op.state), " ", op.what,
        detail ? ` · ${detail}` : ""));
    }
    fill("fleet", rows);
  }

  function renderAll() {
    renderSummary();
    renderFleet();
    renderNotices(null);
    renderTraffic();
    renderBackends();
    renderMatrix();
    renderHistory();
  }

  function tickClocks() {
    for (const t of document.querySelectorAll("time.ago[data-ts]")) {
      const text = fmtAgo(Number(t.getAttribute("data-ts")));
      if (t.textContent !== text) t.textContent = text;
    }
    const up = document.querySelector('[data-tile="uptime"] .tile-value');
    if (up && state.uptimeClock) up.textContent = fmtDuration(state.uptimeAt + (Date.now() / 1000 - state.uptimeClock));
  }

  // -- messages ---------------------------------------------------------------------------------
  function syncClock(msg) {
    if (typeof msg.now === "number") state.offset = msg.now - Date.now() / 1000;
  }

  function applySnapshot(msg) {
    syncClock(msg);
    state.backends = new Map(msg.backends.map((b) => [b.id, b]));
    state.history = msg.history.slice(-HISTORY);
    state.seq = msg.seq;
    state.notices = msg.notices.slice();
    state.charts = msg.charts;
    state.version = msg.version;
    state.uptimeAt = msg.uptime || 0;
    state.uptimeClock = Date.now() / 1000;
    state.queued = msg.queued;
    state.budget = msg.budget || null;
    state.fleet = msg.fleet || null;
    renderAll();
  }

  function applyDelta(msg) {
    syncClock(msg);
    let backendsChanged = false;
    for (const b of msg.backends || []) {
      state.backends.set(b.id, b);
      backendsChanged = true;
    }
    for (const id of msg.removed || []) backendsChanged = state.backends.delete(id) || backendsChanged;
    if (msg.charts) state.charts = msg.charts;
    if (msg.history) addHistory(msg.history);
    if ("queued" in msg) state.queued = msg.queued;
    if ("budget" in msg) state.budget = msg.budget;
    if ("fleet" in msg) {
      state.fleet = msg.fleet;
      renderFleet();
    }
    if (msg.notices && msg.notices.length) {
      state.notices.push(...msg.notices);
      state.notices.splice(0, Math.max(0, state.notices.length - 20));
      renderNotices(new Set(msg.notices));
    }
    if (msg.charts) renderTraffic();
    if (backendsChanged && !msg.charts) renderTraffic(); // the legend lists every backend
    if (backendsChanged || msg.charts) renderBackends();
    if (backendsChanged) renderMatrix();
    if (backendsChanged || msg.charts || msg.history || "queued" in msg || "budget" in msg) renderSummary();
  }

  function handle(msg) {
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "snapshot") applySnapshot(msg);
    else if (msg.type === "delta") applyDelta(msg);
  }

  // -- transport: WebSocket, else polling -------------------------------------------------------
  let socket = null;
  let pollTimer = 0;
  let retryTimer = 0;
  let retries = 0;

  function setConn(mode, text) {
    const conn = byId("conn");
    if (!conn) return;
    conn.setAttribute("data-state", mode);
    const label = conn.querySelector(".conn-text");
    if (label) label.textContent = text;
  }

  async function poll() {
    try {
      const resp = await fetch("/dashboard.json", { cache: "no-store", headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      applySnapshot(await resp.json());
      setConn("polling", `polling · ${fmtClock(now())}`);
    } catch (_err) {
      setConn("offline", "offline · retrying");
    }
  }
  function startPolling() {
    if (pollTimer) return;
    poll();
    pollTimer = window.setInterval(poll, POLL_MS);
  }
  function stopPolling() {
    if (pollTimer) window.clearInterval(pollTimer);
    pollTimer = 0;
  }

  function connect() {
    retryTimer = 0;
    if (!("WebSocket" in window)) {
      startPolling();
      return;
    }
    let ws;
    try {
      ws = new WebSocket(`${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`);
    } catch (_err) {
      startPolling();
      return;
    }
    socket = ws;
    ws.onopen = () => {
      retries = 0;
      stopPolling();
      setConn("live", "live");
    };
    ws.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (_err) {
        return;
      }
      handle(msg);
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      startPolling(); // the 5 s fallback, until the socket is back
      retries += 1;
      const delay = Math.min(30000, 1000 * 2 ** Math.min(retries, 5));
      retryTimer = window.setTimeout(connect, delay);
    };
  }

  function start() {
    document.documentElement.classList.add("js");
    setConn("static", "connecting…");
    connect();
    window.setInterval(tickClocks, 1000);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && !socket && retryTimer) {
        window.clearTimeout(retryTimer);
        connect();
      }
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
