// drover dashboard: a read-only view of one drover serve or drover run.
// No framework, no build step: the state arrives as a snapshot and then as
// coalesced updates over server-sent events (api/events); the views are
// rebuilt from it at most a few times a second. Every piece of data goes
// into the page as text, never as markup.
"use strict";

const STATES = ["pending", "running", "succeeded", "failed", "lost", "cancelled", "skipped"];
const ROW_LIMIT = 1000;      // jobs table rows drawn at once
const BAR_LIMIT = 5000;      // timeline bars drawn at once

const model = { state: null, byName: new Map(), events: [], connected: false };
let jobsFilter = { state: "", text: "" };
let renderTimer = null;
let logStreams = [];         // active log fetches of the instance page

// h builds an element: h("td", {class: "x"}, "text", child, ...).
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  // Nested lists of children are flattened all the way down: an array must
  // never reach the page as its text.
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}
const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const k of kids.flat(Infinity)) if (k !== undefined && k !== null) el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return el;
}

// put replaces el's children, leaving out null and undefined.
function put(el, ...kids) { el.replaceChildren(...kids.flat(Infinity).filter(k => k !== null && k !== undefined)); }
function badge(state) { return h("span", { class: "st st-" + state, "data-state": state }, state); }
function instLink(name) { return h("a", { href: "#/instance/" + encodeURIComponent(name), class: "inst" }, name); }
function t(v) { return v ? new Date(v) : null; }
function fmtTime(v) { const d = t(v); return d ? d.toLocaleTimeString() : ""; }
function fmtDur(ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return "";
  if (ms < 1000) return ms.toFixed(0) + " ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
  const m = Math.floor(s / 60), r = Math.round(s % 60);
  if (m < 60) return m + " min " + r + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}
function duration(in_) {
  const a = t(in_.start);
  if (!a) return null;
  const b = t(in_.end) || (in_.state === "running" ? new Date() : null);
  return b ? b - a : null;
}
function exitText(in_) {
  if (in_.signal) return "signal " + in_.signal;
  if (in_.exit_code !== undefined && in_.exit_code !== null) return "exit " + in_.exit_code;
  return "";
}
function cpuList(ids) {
  if (!ids || !ids.length) return "";
  const out = []; let a = ids[0], b = ids[0];
  for (let i = 1; i <= ids.length; i++) {
    if (i < ids.length && ids[i] === b + 1) { b = ids[i]; continue; }
    out.push(a === b ? String(a) : a + "-" + b);
    if (i < ids.length) a = b = ids[i];
  }
  return out.join(",");
}

// ---- data ----

function setSnapshot(st) {
  model.state = st;
  model.byName = new Map(st.instances.map(i => [i.name, i]));
  schedule();
}
function applyUpdate(u) {
  const st = model.state;
  if (!st) return;
  // Removed first: an instance both removed and listed came back.
  if ((u.removed || []).length) {
    const gone = new Set(u.removed);
    st.instances = st.instances.filter(i => !gone.has(i.name));
    for (const n of gone) model.byName.delete(n);
  }
  for (const in_ of u.instances || []) {
    if (!model.byName.has(in_.name)) st.instances.push(in_);
    else st.instances[st.instances.findIndex(x => x.name === in_.name)] = in_;
    model.byName.set(in_.name, in_);
  }
  if (u.nodes) st.nodes = u.nodes;
  if (u.ended) st.ended = true;
  for (const e of u.events || []) model.events.push(e);
  if (model.events.length > 500) model.events.splice(0, model.events.length - 500);
  schedule(u);
}
function counts(list) {
  const c = Object.fromEntries(STATES.map(s => [s, 0]));
  for (const in_ of list || model.state.instances) c[in_.state] = (c[in_.state] || 0) + 1;
  return c;
}
// isProcess: started with drover start (submission 0 under serve), not an
// instance of a submitted job.
function isProcess(in_) { return model.state.mode === "serve" && !in_.submission; }
function plural(n, word) { return n + " " + word + (n === 1 ? "" : word.endsWith("s") ? "es" : "s"); }
// totals is the header's line: under serve, the processes as drover poll
// shows them (running or ended) and the job instances as drover jobs
// does; under run, the run's instances.
function totals() {
  const st = model.state;
  const byState = (list, noun) => {
    const c = counts(list);
    const parts = STATES.filter(s => c[s]).map(s => c[s] + " " + s);
    return plural(list.length, noun) + (parts.length ? ": " + parts.join(", ") : "");
  };
  if (st.mode !== "serve") return byState(st.instances, "instance") + (st.ended ? " — run over" : "");
  const procs = st.instances.filter(isProcess), jobs = st.instances.filter(i => !isProcess(i));
  const running = procs.filter(i => !isFinal(i)).length, ended = procs.length - running;
  const parts = [];
  if (procs.length || !jobs.length) {
    const what = [running ? running + " running" : "", ended ? ended + " ended" : ""].filter(Boolean);
    parts.push(plural(procs.length, "process") + (what.length ? ": " + what.join(", ") : ""));
  }
  if (jobs.length) parts.push(byState(jobs, "job instance"));
  return parts.join(" · ");
}

function connect() {
  const es = new EventSource("api/events");
  const conn = document.getElementById("conn");
  es.addEventListener("open", () => { model.connected = true; conn.textContent = "live"; conn.className = "conn live"; });
  es.addEventListener("error", () => {
    model.connected = false;
    conn.textContent = model.state && model.state.ended ? "run over (offline)" : "reconnecting…";
    conn.className = "conn down";
  });
  es.addEventListener("snapshot", ev => setSnapshot(JSON.parse(ev.data)));
  es.addEventListener("update", ev => applyUpdate(JSON.parse(ev.data)));
}

// ---- rendering ----

let lastUpdate = null;
function schedule(u) {
  if (u) lastUpdate = u;
  if (renderTimer) return;
  renderTimer = setTimeout(() => { renderTimer = null; render(false); }, 150);
}

function route() {
  const hash = location.hash || "#/map";
  const m = hash.match(/^#\/instance\/(.+)$/);
  if (m) return { view: "instance", name: decodeURIComponent(m[1]) };
  const v = hash.slice(2);
  return { view: ["map", "jobs", "timeline"].includes(v) ? v : "map" };
}

let shownRoute = "";
function render(navigated) {
  const st = model.state;
  if (!st) return;
  document.getElementById("title").textContent = st.title || "drover";
  document.title = (st.title || "drover") + " — dashboard";
  document.getElementById("totals").textContent = totals();
  const r = route();
  for (const v of ["map", "jobs", "timeline"]) {
    document.getElementById("nav-" + v).classList.toggle("active", r.view === v);
  }
  const key = JSON.stringify(r);
  const view = document.getElementById("view");
  if (r.view === "instance") {
    renderInstance(view, r.name, navigated || key !== shownRoute);
  } else {
    stopLogs();
    const fn = { map: renderMap, jobs: renderJobs, timeline: renderTimeline }[r.view];
    fn(view, navigated || key !== shownRoute);
  }
  shownRoute = key;
}

function renderMap(view) {
  const st = model.state;
  const onHW = new Map();   // "node/hw" -> the running instance bound to it
  const heldBy = new Map(); // "node/hw" -> the running instance whose core holds it
  for (const in_ of st.instances) {
    if (in_.state !== "running" || !in_.node) continue;
    for (const hw of in_.hwthreads || []) onHW.set(in_.node + "/" + hw, in_);
    for (const hw of in_.reserved || []) heldBy.set(in_.node + "/" + hw, in_);
  }
  const unbound = st.instances.filter(i => i.state === "running" && !(i.hwthreads || []).length);
  const panels = st.nodes.map(n => {
    const busy = new Set(n.busy || []);
    const hwCount = (n.cores || []).reduce((a, c) => a + c.length, 0);
    const running = st.instances.filter(i => i.state === "running" && i.node === n.name).length;
    const free = unbound.filter(i => i.node === n.name).length;
    const facts = [plural((n.cores || []).length, "core"), plural(hwCount, "hwthread"), busy.size + " busy",
      running + " running" + (free ? " (" + free + " unbound)" : "")];
    if (n.rtt_seconds) facts.push("heartbeat " + fmtDur(n.rtt_seconds * 1000));
    if (n.memory_bytes) facts.push((n.memory_bytes / 2 ** 30).toFixed(1) + " GiB");
    if (n.gpus) facts.push((n.busy_gpus || 0) + "/" + n.gpus + " GPUs in use");
    return h("section", { class: "node" + (n.state === "lost" ? " lost" : ""), "data-node": n.name, "aria-label": "node " + n.name },
      h("h3", {}, n.name, badge(n.state), n.error ? h("span", { class: "muted" }, n.error) : null),
      h("div", { class: "facts" }, facts.join(" · ")),
      h("div", { class: "cores" }, (n.cores || []).map((core, ci) =>
        h("div", { class: "core" }, h("div", { class: "label" }, "core " + ci), core.map(hw => hwCell(n.name, hw, onHW, heldBy, busy))))));
  });
  put(view,
    h("h2", {}, "Cluster map"),
    st.nodes.length ? h("div", { class: "nodes", id: "map" }, panels) : h("p", {}, "No nodes yet."),
    unbound.length ? unboundList(unbound) : null);
}

// hwCell is one hwthread of the map: the instance bound to it, the one
// whose core holds it, reserved by a process the dashboard does not know
// yet (a start in flight), or idle.
function hwCell(node, hw, onHW, heldBy, busy) {
  const key = node + "/" + hw, cpu = h("span", { class: "cpu" }, "cpu " + hw);
  const link = (cls, in_, title, mark) => h("a", { class: "hw " + cls, href: "#/instance/" + encodeURIComponent(in_.name), title, "data-hw": hw, "data-instance": in_.name },
    cpu, mark + in_.name);
  let in_ = onHW.get(key);
  if (in_) return link("used", in_, in_.name + " runs on cpu " + hw, "▶ ");
  in_ = heldBy.get(key);
  if (in_) return link("reserved", in_, "cpu " + hw + " reserved by " + in_.name + " (bound to cpu " + cpuList(in_.hwthreads) + " on the same core)", "▣ ");
  if (busy.has(hw)) return h("span", { class: "hw reserved", "data-hw": hw, title: "cpu " + hw + " reserved for a process that is starting" }, cpu, "▣ reserved");
  return h("span", { class: "hw idle", "data-hw": hw }, cpu, "idle");
}

// unboundList lists the running instances bound to no hwthread: they share
// their node's cores, so the map has no cell for them.
function unboundList(list) {
  const shown = list.slice(0, ROW_LIMIT);
  return h("section", { id: "unbound", "aria-label": "running without bound cores" },
    h("h2", {}, "Running without bound cores (" + list.length + ")"),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "instance"), h("th", {}, "node"), h("th", {}, "started"), h("th", { class: "num" }, "duration"))),
      h("tbody", {}, shown.map(i => h("tr", { "data-instance": i.name },
        h("td", {}, instLink(i.name)), h("td", {}, i.node || "(starting)"), h("td", {}, fmtTime(i.start)), h("td", { class: "num" }, fmtDur(duration(i))))))),
    list.length > shown.length ? h("p", { class: "note" }, "Showing " + shown.length + " of " + list.length + "; the jobs view lists all.") : null);
}

function renderJobs(view, fresh) {
  const st = model.state;
  const c = counts();
  let filters = view.querySelector(".filters");
  if (fresh || !filters) {
    const input = h("input", { type: "search", placeholder: "filter by name or node", "aria-label": "filter by name or node", value: jobsFilter.text });
    input.addEventListener("input", () => { jobsFilter.text = input.value; renderJobs(view, false); });
    filters = h("div", { class: "filters", role: "group", "aria-label": "filter by state" });
    put(view, h("h2", {}, "Jobs"), filters, h("div", { id: "jobs-body" }));
    filters.append(h("span", { class: "buttons" }), input);
  }
  const buttons = [["", "all", st.instances.length], ...STATES.filter(s => c[s]).map(s => [s, s, c[s]])].map(([key, label, n]) =>
    h("button", { type: "button", "aria-pressed": jobsFilter.state === key ? "true" : "false", "data-filter": label, onclick: () => { jobsFilter.state = key; renderJobs(view, false); } },
      label + " (" + n + ")"));
  filters.querySelector(".buttons").replaceChildren(...buttons);
  const text = jobsFilter.text.toLowerCase();
  const rows = st.instances.filter(i => (!jobsFilter.state || i.state === jobsFilter.state) &&
    (!text || i.name.toLowerCase().includes(text) || (i.node || "").toLowerCase().includes(text)));
  const shown = rows.slice(0, ROW_LIMIT);
  const table = h("table", { id: "jobs" },
    h("thead", {}, h("tr", {}, h("th", {}, "instance"), h("th", {}, "state"), h("th", {}, "node"), h("th", {}, "hwthreads"),
      h("th", { class: "num" }, "attempts"), h("th", { class: "num" }, "retries"), h("th", {}, "exit"), h("th", {}, "started"), h("th", { class: "num" }, "duration"), h("th", {}, "outcome"))),
    h("tbody", {}, shown.map(i => h("tr", { class: "row-" + i.state, "data-instance": i.name },
      h("td", {}, instLink(i.name)), h("td", {}, badge(i.state)), h("td", {}, i.node || ""), h("td", {}, cpuList(i.hwthreads)),
      h("td", { class: "num" }, i.attempts || 0), h("td", { class: "num" }, Math.max((i.attempts || 0) - 1, 0)),
      h("td", {}, exitText(i)), h("td", {}, fmtTime(i.start)), h("td", { class: "num" }, fmtDur(duration(i))), h("td", {}, i.outcome || "")))));
  const body = view.querySelector("#jobs-body");
  put(body, rows.length ? table : h("p", {}, "No instances match."),
    rows.length > ROW_LIMIT ? h("p", { class: "note" }, "Showing " + ROW_LIMIT + " of " + rows.length + "; filter to narrow.") : null);
}

function stopLogs() {
  for (const c of logStreams) c.abort();
  logStreams = [];
}

// followLog streams an instance's stdout or stderr into pre, keeping the
// last 256 KiB.
function followLog(name, stream, pre, status, follow) {
  const ctl = new AbortController();
  logStreams.push(ctl);
  pre.textContent = "";
  status.textContent = follow ? "following…" : "";
  const url = "api/logs?name=" + encodeURIComponent(name) + "&stream=" + stream + (follow ? "&follow=1" : "");
  fetch(url, { signal: ctl.signal }).then(async resp => {
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      let text = pre.textContent + dec.decode(value, { stream: true });
      if (text.length > 262144) text = "…" + text.slice(-262144);
      pre.textContent = text;
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
    status.textContent = "complete";
    pre.dataset.complete = "1";
  }).catch(err => { if (err.name !== "AbortError") status.textContent = "error: " + err.message; });
}

let instanceShown = null; // {name, attemptsStarted, final}
function renderInstance(view, name, fresh) {
  const in_ = model.byName.get(name);
  if (!in_) {
    stopLogs();
    instanceShown = null;
    put(view, h("h2", {}, name), h("p", {}, "No such instance (yet)."));
    return;
  }
  const startedLogs = in_.state !== "pending" || (in_.runs || []).length > 0;
  const needLogs = fresh || !instanceShown || instanceShown.name !== name ||
    (startedLogs && !instanceShown.logs) || (instanceShown.attempts !== (in_.attempts || 0) && in_.state === "running");
  if (needLogs || !view.querySelector("#out-stdout")) {
    stopLogs();
    const panes = ["stdout", "stderr"].map(stream => {
      const pre = h("pre", { class: "log", id: "out-" + stream, tabindex: "0", "aria-label": stream + " of " + name });
      const status = h("span", { class: "follow" });
      return { stream, pre, status, box: h("section", {}, h("h2", {}, stream, " ", status), pre) };
    });
    put(view, h("p", {}, h("a", { href: "#/jobs" }, "← jobs")), h("h2", {}, "Instance ", h("code", {}, name), " ", h("span", { id: "inst-state" })),
      h("dl", { class: "facts", id: "inst-facts" }), h("h2", {}, "Attempts"), h("div", { id: "inst-runs" }),
      h("div", { class: "outputs" }, panes.map(p => p.box)), h("h2", {}, "Events"), h("div", { id: "inst-events" }));
    if (startedLogs) {
      for (const p of panes) followLog(name, p.stream, p.pre, p.status, !in_.state || !isFinal(in_));
    } else {
      for (const p of panes) p.status.textContent = "not started yet";
    }
    instanceShown = { name, logs: startedLogs, attempts: in_.attempts || 0, final: isFinal(in_) };
    loadEvents(name);
  } else if (isFinal(in_) && !instanceShown.final) {
    instanceShown.final = true;
    loadEvents(name);
  } else if (lastUpdate && (lastUpdate.events || []).some(e => e.name === name)) {
    loadEvents(name);
  }
  view.querySelector("#inst-state").replaceChildren(badge(in_.state));
  const facts = [["state", in_.state], ["outcome", in_.outcome || ""], ["node", in_.node || ""], ["hwthreads", cpuList(in_.hwthreads)],
    ["also holds", cpuList((in_.reserved || []).filter(hw => !(in_.hwthreads || []).includes(hw)))],
    ["attempts", in_.attempts || 0], ["exit", exitText(in_)], ["started", t(in_.start) ? t(in_.start).toLocaleString() : ""],
    ["ended", t(in_.end) ? t(in_.end).toLocaleString() : ""], ["duration", fmtDur(duration(in_))]];
  view.querySelector("#inst-facts").replaceChildren(...facts.filter(f => f[1] !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const runs = in_.runs || [];
  view.querySelector("#inst-runs").replaceChildren(runs.length ? h("table", {},
    h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "result"), h("th", {}, "node"), h("th", {}, "hwthreads"), h("th", {}, "started"), h("th", { class: "num" }, "duration"), h("th", {}, "detail"))),
    h("tbody", {}, runs.map(r => h("tr", { class: "row-" + r.result }, h("td", { class: "num" }, r.attempt), h("td", {}, badge(r.result)), h("td", {}, r.node || ""),
      h("td", {}, cpuList(r.hwthreads)), h("td", {}, fmtTime(r.start)), h("td", { class: "num" }, fmtDur((t(r.end) || new Date()) - t(r.start))), h("td", {}, r.detail || ""))))) :
    h("p", { class: "muted" }, "Not started yet."));
}
function isFinal(in_) { return in_.state !== "pending" && in_.state !== "running"; }

function loadEvents(name) {
  fetch("api/instance?name=" + encodeURIComponent(name)).then(r => r.ok ? r.json() : null).then(d => {
    const box = document.getElementById("inst-events");
    if (!d || !box || route().name !== name) return;
    put(box, d.events.length ? h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "time"), h("th", {}, "event"), h("th", {}, "node"), h("th", { class: "num" }, "attempt"), h("th", {}, "details"))),
      h("tbody", {}, d.events.map(e => h("tr", { class: "ev-" + e.event },
        h("td", {}, new Date(e.time).toLocaleTimeString()), h("td", {}, e.event), h("td", {}, e.node || ""), h("td", { class: "num" }, e.attempt || ""),
        h("td", {}, [e.exit_code !== undefined ? "exit " + e.exit_code : "", e.signal ? "signal " + e.signal : "", e.pid ? "pid " + e.pid : "",
          e.hwthreads ? "hwthreads " + e.hwthreads : "", e.error || ""].filter(Boolean).join("; ")))))) :
      h("p", { class: "muted" }, "No events yet."));
  });
}

function patterns() {
  return s("defs", {},
    s("pattern", { id: "pat-failed", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
      s("rect", { width: 6, height: 6, fill: "#ffd8d3" }), s("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#cf222e", "stroke-width": 3 })),
    s("pattern", { id: "pat-lost", width: 6, height: 6, patternUnits: "userSpaceOnUse" },
      s("rect", { width: 6, height: 6, fill: "#fff1e5" }), s("circle", { cx: 3, cy: 3, r: 1.5, fill: "#bc4c00" })),
    s("pattern", { id: "pat-running", width: 8, height: 8, patternUnits: "userSpaceOnUse", patternTransform: "rotate(135)" },
      s("rect", { width: 8, height: 8, fill: "#ddf4ff" }), s("line", { x1: 0, y1: 0, x2: 0, y2: 8, stroke: "#1f6feb", "stroke-width": 2 })));
}

function legend() {
  const item = (cls, label) => h("span", {}, h("span", { class: "timeline swatch" },
    s("svg", { width: 28, height: 14, "aria-hidden": "true" }, s("rect", { class: "bar " + cls, x: 1, y: 1, width: 26, height: 12 }))), " " + label);
  // The one set of patterns of the page: every bar, in the legend and in
  // the timeline, refers to it.
  return h("div", { class: "legend" }, s("svg", { width: 0, height: 0, "aria-hidden": "true", class: "defs" }, patterns()), item("bar-succeeded", "succeeded (solid)"), item("bar-running", "running (stripes)"),
    item("bar-failed", "failed (hatched, ✗)"), item("bar-lost", "lost (dots, dashed edge)"));
}

function renderTimeline(view) {
  const st = model.state;
  const bars = [];
  for (const in_ of st.instances) for (const r of in_.runs || []) bars.push({ in_, r });
  bars.sort((a, b) => t(a.r.start) - t(b.r.start));
  const shown = bars.slice(-BAR_LIMIT);
  const t0 = shown.length ? Math.min(t(st.started) || Infinity, ...shown.map(b => t(b.r.start))) : Date.now();
  const tEnd = Math.max(Date.now() - (st.ended ? Infinity : 0), ...shown.map(b => t(b.r.end) || (st.ended ? t(b.r.start) : Date.now())), t0 + 1000);
  const labelW = 150, laneH = 22, width = Math.max(view.clientWidth - 30, 600), plotW = width - labelW - 10;
  const x = ms => labelW + (ms - t0) / (tEnd - t0) * plotW;
  const span_ = b => {
    const start = t(b.r.start), end = t(b.r.end) || (st.ended ? start : Date.now());
    const x1 = x(start);
    return { start, end, x1, w: Math.max(x(end) - x1, 3) };
  };
  // Lanes: one per node and hwthread the bars use. Unbound bars get lanes
  // of their own on their node, as many as overlap on the page at once.
  const lanes = new Map();
  const laneKey = (node, hw) => node + "\u0000" + hw;
  const nodeOrder = new Map(st.nodes.map((n, i) => [n.name, i]));
  const unboundEnds = new Map(); // node -> right edge of the last bar in each of its unbound lanes
  for (const b of shown) {
    b.node = b.r.node || "(no node)";
    b.span = span_(b);
    if ((b.r.hwthreads || []).length) {
      b.hws = b.r.hwthreads;
      for (const hw of b.hws) lanes.set(laneKey(b.node, hw), { node: b.node, hw });
      continue;
    }
    const ends = unboundEnds.get(b.node) || [];
    unboundEnds.set(b.node, ends);
    let k = ends.findIndex(e => e <= b.span.x1);
    if (k < 0) k = ends.push(0) - 1;
    // A failure's mark, after its bar, takes room in the lane too.
    const mark = b.r.result === "failed" || b.r.result === "lost" ? 8 + 6.5 * b.in_.name.length : 0;
    ends[k] = b.span.x1 + b.span.w + 1 + mark;
    b.hws = ["u" + (k + 1)];
    lanes.set(laneKey(b.node, b.hws[0]), { node: b.node, hw: b.hws[0], unbound: k + 1 });
  }
  const laneList = [...lanes.values()].sort((a, b) => (nodeOrder.get(a.node) ?? 1e9) - (nodeOrder.get(b.node) ?? 1e9) || a.node.localeCompare(b.node) ||
    !!a.unbound - !!b.unbound || (a.unbound ? a.unbound - b.unbound : a.hw - b.hw));
  const laneIdx = new Map(laneList.map((l, i) => [laneKey(l.node, l.hw), i]));
  const height = laneList.length * laneH + 30;
  const svg = s("svg", { width, height, role: "img", "aria-label": "timeline: one lane per node and hwthread, one bar per attempt", id: "timeline-svg" });
  // axis
  const span = tEnd - t0, steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600].map(v => v * 1000);
  const step = steps.find(v => span / v <= 10) || 7200000;
  for (let v = 0; v <= span; v += step) {
    svg.append(s("line", { class: "grid", x1: x(t0 + v), x2: x(t0 + v), y1: 0, y2: height - 20 }),
      s("text", { x: x(t0 + v) + 2, y: height - 6, fill: "#5b6470" }, fmtDur(v)));
  }
  laneList.forEach((l, i) => {
    svg.append(s("rect", { class: "lane-bg", x: 0, y: i * laneH, width: labelW - 4, height: laneH - 2 }),
      s("text", { class: "lane-label", x: 4, y: i * laneH + 15 }, l.node + (l.unbound ? " unbound " + l.unbound : " cpu " + l.hw)));
  });
  for (const b of shown) {
    const { start, end, x1, w } = b.span;
    for (const hw of b.hws) {
      const y = laneIdx.get(laneKey(b.node, hw)) * laneH + 2;
      const g = s("g", { "data-instance": b.in_.name, "data-result": b.r.result },
        s("title", {}, b.in_.name + " attempt " + b.r.attempt + ": " + b.r.result + (b.r.detail ? " (" + b.r.detail + ")" : "") + ", " + fmtDur(end - start)),
        s("rect", { class: "bar bar-" + b.r.result, x: x1, y, width: w, height: laneH - 6, rx: 2 }));
      g.addEventListener("click", () => { location.hash = "#/instance/" + encodeURIComponent(b.in_.name); });
      if (b.r.result === "failed" || b.r.result === "lost") {
        g.append(s("text", { class: "mark", x: x1 + w + 2, y: y + 13 }, (b.r.result === "failed" ? "✗ " : "? ") + b.in_.name));
      } else if (w > 60) {
        g.append(s("text", { class: "bar-text bar-text-" + b.r.result, x: x1 + 4, y: y + 12 }, b.in_.name));
      }
      svg.append(g);
    }
  }
  put(view, h("h2", {}, "Timeline"), legend(),
    shown.length ? h("div", { class: "timeline" }, svg) : h("p", {}, "Nothing has started yet."),
    bars.length > BAR_LIMIT ? h("p", { class: "note" }, "Showing the latest " + BAR_LIMIT + " of " + bars.length + " attempts.") : null);
}

window.addEventListener("hashchange", () => render(true));
// Running bars and durations grow with time.
setInterval(() => {
  if (!model.state || model.state.ended || document.hidden) return;
  const r = route().view;
  if ((r === "timeline" || r === "jobs") && model.state.instances.some(i => i.state === "running")) schedule();
}, 1000);
connect();
