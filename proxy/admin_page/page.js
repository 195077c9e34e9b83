// forkproxy live page: Server-Sent Events from /events, drawn on plain canvases.
// No build step and no library: this page must work on a machine without internet.
"use strict";

const WINDOW_S = 300; // what the charts show; the proxy keeps the same history
const history = [];   // slim samples: {seq, t, series: {"*": machine, app: {...}}} (proxy/live.py)
// The app the charts follow; "*" is the whole machine (every app summed). The machine by
// default: an operator of many apps first asks whether the machine keeps up with all of
// them (they share one budget), and a "busiest app" default would hop from app to app as
// load moves, splicing unrelated series into one line. The choice lives in the URL's
// hash (#app=NAME) so a reload or a shared link keeps it.
const history_ = window.history;
const ALL = "*";
let selected = new URLSearchParams(location.hash.slice(1)).get("app") || ALL;
let latest = null;
let shown = [];       // history as the selected series: {t, seq, queued, in_flight, ...}
const css = getComputedStyle(document.documentElement);
const color = (name) => css.getPropertyValue("--" + name).trim();

function live(s) {
  return (s.states.ready || 0) + (s.states.starting || 0);
}

function scaleMax(v) {
  // a round upper bound so the axis does not jump every second
  if (v <= 4) return 4;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function frame(canvas, maxY) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 36, top = 6, bottom = 16;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = color("grid");
  ctx.fillStyle = "#868e96";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + (h - top - bottom) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(String(+(maxY * i / 4).toFixed(2)), 2, y + 4);
  }
  const now = history.length ? history[history.length - 1].t : 0;
  // the axis spans what the proxy has seen, from one minute up to WINDOW_S
  const span = history.length ? Math.min(WINDOW_S, Math.max(60, now - history[0].t)) : 60;
  const step = span > 120 ? 60 : 15;
  for (let s = 0; s <= span; s += step) {
    const label = s ? (s % 60 ? `-${s}s` : `-${s / 60}m`) : "now";
    ctx.fillText(label, w - (w - left) * s / span - (s ? 14 : 22), h - 3);
  }
  return {
    ctx,
    x: (t) => left + (w - left) * (1 - (now - t) / span),
    y: (v) => top + (h - top - bottom) * (1 - v / maxY),
  };
}

function line(f, get, stroke, dash) {
  const { ctx } = f;
  ctx.beginPath();
  ctx.setLineDash(dash || []);
  ctx.strokeStyle = stroke;
  ctx.lineWidth = 2;
  shown.forEach((s, i) => {
    const x = f.x(s.t), y = f.y(get(s));
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  ctx.stroke();
  ctx.setLineDash([]);
}

function band(f, lo, hi, fill) {
  if (!shown.length) return;
  const { ctx } = f;
  ctx.beginPath();
  shown.forEach((s, i) => {
    const x = f.x(s.t), y = f.y(hi(s));
    if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
  });
  for (let i = shown.length - 1; i >= 0; i--) ctx.lineTo(f.x(shown[i].t), f.y(lo(shown[i])));
  ctx.closePath();
  ctx.fillStyle = fill;
  ctx.globalAlpha = 0.75;
  ctx.fill();
  ctx.globalAlpha = 1;
}

function drawInstances() {
  const canvas = document.getElementById("chart-instances");
  const st = (s, k) => s.states[k] || 0;
  let peak = 0;
  for (const s of shown) peak = Math.max(peak, live(s) + st(s, "draining"), s.lower_bound);
  const f = frame(canvas, scaleMax(peak));
  const ready = (s) => st(s, "ready");
  const starting = (s) => ready(s) + st(s, "starting");
  band(f, () => 0, ready, color("ready"));
  band(f, ready, starting, color("starting"));
  band(f, starting, (s) => starting(s) + st(s, "draining"), color("draining"));
  line(f, (s) => s.lower_bound, color("bound"), [6, 3]);
  // what the chart shows, for people and for the browser test
  canvas.dataset.peak = String(Math.max(0, ...shown.map(live)));
  canvas.dataset.points = String(shown.length);
}

function drawRequests() {
  let peak = 0;
  for (const s of shown) peak = Math.max(peak, s.in_flight, s.queued);
  const canvas = document.getElementById("chart-requests");
  canvas.dataset.peak = String(peak);
  const f = frame(canvas, scaleMax(peak));
  line(f, (s) => s.in_flight, color("inflight"));
  line(f, (s) => s.queued, color("queued"));
}

function drawStarts() {
  let peak = 0;
  for (const s of shown) peak = Math.max(peak, s.starts_per_s);
  const canvas = document.getElementById("chart-starts");
  canvas.dataset.peak = String(peak);
  const f = frame(canvas, scaleMax(peak));
  f.ctx.fillStyle = color("starts");
  for (const s of shown) {
    if (s.starts_per_s > 0) f.ctx.fillRect(f.x(s.t) - 2, f.y(s.starts_per_s), 4, f.y(0) - f.y(s.starts_per_s));
  }
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function secs(v) {
  return v >= 60 ? `${(v / 60).toFixed(1)}m` : `${v.toFixed(1)}s`;
}

function bytes(v) {
  if (v === null || v === undefined) return "–";
  const mib = v / 1048576;
  return mib >= 1024 ? `${(mib / 1024).toFixed(2)} GiB` : `${mib.toFixed(1)} MiB`;
}

function renderApps(s) {
  const apps = s.apps || [];
  document.getElementById("apps").dataset.seq = String(s.seq);
  renderPicker(apps.map((a) => a.app));
  fillTable("apps", apps, (tr, a) => {
    tr.dataset.app = a.app;
    if (a.app === selected) tr.className = "selected";
    tr.title = `show ${a.app} in the charts and the instances`;
    tr.onclick = () => select(a.app === selected ? ALL : a.app);
    cell(tr, a.app);
    cell(tr, a.backend);
    cell(tr, String(a.busy), "num");
    cell(tr, String(a.idle), "num");
    cell(tr, String(a.starting), "num");
    cell(tr, String(a.queued), "num");
    cell(tr, a.requests_per_s.toFixed(1), "num");
    cell(tr, bytes(a.memory), "num");
    // "up · 40.1 MiB", "down", or "–" when the backend reports no template
    const tpl = a.template === "up" ? `up · ${bytes(a.template_memory)}` : a.template || "–";
    cell(tr, tpl, a.template ? `template-${a.template}` : "");
  });
  const b = s.budget || {};
  const cap = (v, fmt) => (v ? fmt(v) : "no cap");
  fillTable("budget", [
    ["instances", String(b.instances ?? "–"), cap(b.max_instances, String)],
    ["memory", bytes(b.memory), cap(b.max_memory, bytes)],
  ], (tr, [name, used, limit]) => {
    tr.dataset.resource = name;
    cell(tr, name);
    cell(tr, used, "num");
    cell(tr, limit, "num");
  });
}

function fillTable(id, rows, render) {
  const tbody = document.querySelector(`#${id} tbody`);
  const fresh = document.createElement("tbody");
  for (const r of rows) {
    const tr = document.createElement("tr");
    render(tr, r);
    fresh.appendChild(tr);
  }
  tbody.replaceWith(fresh);
}

function renderPicker(names) {
  const picker = document.getElementById("app-select");
  const want = [ALL, ...names];
  // an app a reload removed stays choosable (its charts go flat) rather than vanishing
  if (selected !== ALL && !names.includes(selected)) want.push(selected);
  const have = [...picker.options].map((o) => o.value);
  if (have.join("\n") !== want.join("\n")) {
    picker.replaceChildren(...want.map((v) => new Option(v === ALL ? "all apps (the machine)" : v, v)));
  }
  picker.value = selected;
}

function select(app) {
  selected = app;
  const hash = app === ALL ? "" : `#app=${encodeURIComponent(app)}`;
  history_.replaceState(null, "", location.pathname + location.search + hash);
  refilter();
  if (latest) renderSample(latest);
  redraw();
}

// the selected series of a slim sample, or null when it has none (the app is not there)
function pick(s) {
  const one = s.series && s.series[selected];
  return one ? { seq: s.seq, t: s.t, ...one } : null;
}

function refilter() {
  shown = history.map(pick).filter(Boolean);
}

function selectedInstances(s) {
  const apps = s.apps || [];
  if (!apps.length) return s.instances.map((r) => ({ ...r, app: r.app || s.pool }));
  const chosen = selected === ALL ? apps : apps.filter((a) => a.app === selected);
  return chosen.flatMap((a) => a.instances.map((r) => ({ ...r, app: a.app })));
}

function renderSample(s) {
  latest = s;
  // the heading names what the page shows: the picked app, or with several apps all of them
  const every = s.apps || [];
  const mine = every.find((a) => a.app === selected);
  const what = mine ? `${mine.app} · ${mine.backend}`
    : every.length > 1 ? `${every.length} apps · ${s.backend}` : `${s.pool} · ${s.backend}`;
  document.getElementById("pool").textContent = `${what} · owner ${s.owner}`;
  const one = pick(s) || { queued: 0, in_flight: 0, states: {}, lower_bound: 0, starts_per_s: 0, spares: 0 };
  const charts = document.querySelector("section.charts");
  charts.dataset.app = selected;
  charts.dataset.seq = String(s.seq);
  document.getElementById("shown-app").textContent =
    selected === ALL ? "all apps (summed)" : selected;
  document.getElementById("now-instances").textContent =
    `now ${live(one)} live (${one.states.ready || 0} ready), ${one.spares} spare, ` +
    `lower bound ${one.lower_bound}`;
  document.getElementById("now-requests").textContent =
    `now ${one.in_flight} in flight, ${one.queued} queued`;
  document.getElementById("now-starts").textContent = `now ${one.starts_per_s.toFixed(1)}/s`;
  const table = document.getElementById("instances");
  table.dataset.seq = String(s.seq);
  fillTable("instances", selectedInstances(s), (tr, r) => {
    tr.dataset.id = r.id;
    cell(tr, r.id);
    cell(tr, r.backend);
    cell(tr, r.state, `state-${r.state}`);
    cell(tr, String(r.in_flight), "num");
    cell(tr, String(r.requests_served), "num");
    cell(tr, secs(r.age), "num");
    cell(tr, r.in_flight ? "–" : secs(r.idle), "num");
    cell(tr, r.endpoint || "");
    cell(tr, r.owner || "");
    cell(tr, r.app);
  });
  renderApps(s);
  // the picked app's own settings and failures; with all apps picked, the first app's
  // (settings do not sum), and the heading says whose they are
  const apps = s.apps || [];
  const own = apps.find((a) => a.app === selected && a.settings) ||
    (apps.length && apps[0].settings ? apps[0] : null);
  const settings = own ? own.settings : s.settings;
  const source = own ? own.settings_source : s.settings_source;
  const whose = own && apps.length > 1 ? `${own.app}: ` : "";
  document.getElementById("settings-source").textContent = whose +
    (source === "pool" ? "(as the pool runs them, auto resolved)" : "(from the config)");
  document.getElementById("settings").dataset.app = own ? own.app : "";
  fillTable("settings", Object.entries(settings), (tr, [k, v]) => {
    cell(tr, k);
    cell(tr, typeof v === "object" ? JSON.stringify(v) : String(v));
  });
  fillTable("results", Object.entries(s.start_results), (tr, [k, v]) => {
    cell(tr, k);
    cell(tr, String(v), "num");
  });
  const failed = own ? own.failures : s.failures;
  const failures = failed.length ? failed.slice().reverse() : [null];
  fillTable("failures", failures, (tr, f) => {
    if (!f) {
      cell(tr, "none since the admin listener started").colSpan = 4;
      return;
    }
    cell(tr, new Date(f.t * 1000).toLocaleTimeString());
    cell(tr, f.instance);
    cell(tr, f.reason);
    cell(tr, f.error);
  });
}

function push(s) {
  history.push(s);
  while (history.length && history[0].t < s.t - WINDOW_S) history.shift();
}

function redraw() {
  drawInstances();
  drawRequests();
  drawStarts();
}

document.getElementById("app-select").addEventListener("change", (ev) => select(ev.target.value));
window.addEventListener("hashchange", () => {
  const app = new URLSearchParams(location.hash.slice(1)).get("app") || ALL;
  if (app !== selected) select(app);
});

function connect() {
  const status = document.getElementById("status");
  const es = new EventSource("events");
  es.addEventListener("history", (ev) => {
    history.length = 0;
    for (const s of JSON.parse(ev.data)) push(s);
    refilter();
    redraw();
  });
  es.addEventListener("sample", (ev) => {
    const s = JSON.parse(ev.data);
    if (!history.length || history[history.length - 1].seq < s.seq) push(s);
    refilter();
    renderSample(s);
    redraw();
    status.textContent = `live · ${new Date(s.t * 1000).toLocaleTimeString()}`;
    status.className = "status live";
  });
  es.onerror = () => {
    status.textContent = "connection lost, retrying…";
    status.className = "status lost";
  };
}

connect();
