// QuantLens status page. One script for the live page (it fetches the trigger daemon's API) and
// for the static report (the same API answers are inlined in a `report-data` element and read
// from there): every view asks `api(path)` and does not know which it got.
// Everything is drawn with DOM calls and textContent, never innerHTML, so nothing in the data
// can become markup.
"use strict";

const REPORT = (() => {
  const element = document.getElementById("report-data");
  return element ? JSON.parse(element.textContent) : null;
})();
const TOKEN_KEY = "quantlens-token";
const LIVE_REFRESH_MS = 10000;
const RUN_POLL_MS = 1000;
const LOG_TAIL = 200;
const RUNS_SHOWN = 50;

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// ---------------------------------------------------------------- data

async function api(path, options = {}) {
  if (REPORT) {
    if (!(path in REPORT)) throw new ApiError(404, { error: `not in this report: ${path}` });
    return REPORT[path];
  }
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (response.status === 401) {
    askForToken(token ? "That token was refused. Enter the daemon's API token." : null);
    throw new ApiError(401, body);
  }
  if (!response.ok && !(options.accept || []).includes(response.status)) {
    throw new ApiError(response.status, body);
  }
  return options.accept ? { status: response.status, body } : body;
}

// ---------------------------------------------------------------- DOM helpers

function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  return fill(element, attributes, children);
}

function svg(tag, attributes, ...children) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  return fill(element, attributes, children);
}

function fill(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function show(...nodes) {
  document.getElementById("view").replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function notice(text, kind = "error") {
  const element = document.getElementById("notice");
  element.textContent = text;
  element.className = `notice ${kind}`;
  element.hidden = !text;
}

// ---------------------------------------------------------------- formatting

function utc(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/(Z|\+00:00)$/, " UTC") : "";
}

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.round((now() - Date.parse(iso)) / 1000);
  if (seconds < 0) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} days ago`;
}

// A report is read as of when it was made, not when it is opened.
function now() {
  return REPORT ? Date.parse(REPORT.generated_at) : Date.now();
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function between(start, end) {
  return start ? ((end ? Date.parse(end) : now()) - Date.parse(start)) / 1000 : null;
}

function when(iso) {
  return iso ? h("span", { title: utc(iso) }, ago(iso), h("span", { class: "muted small" }, ` · ${utc(iso)}`)) : h("span", { class: "muted" }, "never");
}

function number(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

function badge(state) {
  return h("span", { class: `badge ${state}` }, state.replace("_", " "));
}

function assetLink(key) {
  return h("a", { href: `#/assets/${key}` }, key);
}

function runLink(id) {
  return h("a", { href: `#/runs/${encodeURIComponent(id)}` }, id);
}

// What an asset's colour says: its last run failed, never materialised, stale, or fresh.
function assetState(entry) {
  if (entry.last_run && entry.last_run.status === "failed") return "failed";
  if (entry.version === null || entry.version === undefined) return "never";
  if (String(entry.state).startsWith("stale")) return "stale";
  return "fresh";
}

function checksSummary(lastRun) {
  const checks = (lastRun && lastRun.checks) || [];
  if (!checks.length) return h("span", { class: "muted" }, "–");
  const failed = checks.filter((c) => !c.passed && c.blocking);
  const warned = checks.filter((c) => !c.passed && !c.blocking);
  return h("span", { class: "checks" },
    `${checks.length - failed.length - warned.length}/${checks.length} passed`,
    failed.map((c) => [h("br"), h("span", { class: "fail", title: c.detail }, `✗ ${c.name}`)]),
    warned.map((c) => [h("br"), h("span", { class: "warn", title: c.detail }, `⚠ ${c.name}`)]));
}

// ---------------------------------------------------------------- views

const views = {
  async assets() {
    const catalog = await api("/assets");
    const assets = catalog.assets.filter((e) => !e.side_table_of);
    const layers = [...new Set(assets.map((e) => e.layer))];
    return [
      layers.map((layer) => [
        h("h2", {}, layer),
        h("table", { class: "assets", "data-layer": layer },
          h("thead", {}, h("tr", {}, ["Asset", "Kind", "Version", "Rows", "Last materialised", "State", "Checks (last run)", "Description"].map((t) => h("th", {}, t)))),
          h("tbody", {}, assets.filter((e) => e.layer === layer).map((e) =>
            h("tr", { "data-asset": e.table, "data-state": assetState(e) },
              h("td", { class: "key" }, assetLink(e.table)),
              h("td", { class: "kind" }, e.kind === "sql" ? "SQL" : "Rust"),
              h("td", { class: "version num" }, e.version ?? "–"),
              h("td", { class: "rows num" }, number(e.rows)),
              h("td", { class: "materialised" }, when(e.last_materialized)),
              h("td", { class: "state" }, badge(assetState(e)), " ",
                h("span", { class: "small muted" }, String(e.state).startsWith("stale: ") ? String(e.state).slice(7) : "")),
              h("td", {}, checksSummary(e.last_run)),
              h("td", { class: "small" }, e.description || "")))))]),
      h("p", { class: "small muted" }, `Catalog written by run `, runLink(catalog.run_id), ` at ${utc(catalog.generated_at)}.`),
    ];
  },

  async asset(key) {
    const catalog = await api("/assets");
    const entry = catalog.assets.find((e) => e.table === key);
    if (!entry) throw new ApiError(404, { error: `no asset ${key} in the catalog` });
    const downstream = catalog.edges.filter(([from]) => from === key).map(([, to]) => to);
    const last = entry.last_run;
    const sideTables = catalog.assets.filter((e) => e.side_table_of === key).map((e) => e.table);
    return [
      h("h2", {}, key, " ", badge(assetState(entry))),
      h("dl", { class: "facts" },
        fact("Kind", entry.kind === "sql" ? `SQL (${entry.defined_in})` : "Rust"),
        fact("Description", entry.description),
        fact("Group", entry.group),
        fact("Version", entry.version ?? "–"),
        fact("Rows", number(entry.rows)),
        fact("Last materialised", when(entry.last_materialized)),
        fact("State", entry.state),
        fact("Code version", h("code", {}, entry.code_version)),
        fact("Upstream", links(entry.deps)),
        fact("Downstream", links(downstream)),
        sideTables.length ? fact("Side tables", sideTables.join(", ")) : null,
        fact("Last run", last ? [runLink(last.run_id), " ", badge(last.status)] : "none recorded"),
        last && last.error ? fact("Error", h("span", { class: "error-text" }, last.error)) : null),
      h("h2", {}, "Checks in the last run"),
      last && last.checks && last.checks.length
        ? h("table", { class: "checks" },
          h("thead", {}, h("tr", {}, ["Check", "Result", "Blocking", "Detail"].map((t) => h("th", {}, t)))),
          h("tbody", {}, last.checks.map((c) => h("tr", {},
            h("td", {}, c.name),
            h("td", {}, c.passed ? badge("succeeded") : badge(c.blocking ? "failed" : "stale")),
            h("td", {}, c.blocking ? "yes" : "no (warning)"),
            h("td", { class: "small" }, c.detail || "")))))
        : h("p", { class: "muted" }, "No checks ran."),
    ];
  },

  async lineage() {
    const catalog = await api("/assets");
    return [
      h("div", { class: "legend" }, ["fresh", "stale", "failed", "never"].map((s) => [badge(s), " "])),
      lineageGraph(catalog),
    ];
  },

  async runs() {
    const { runs } = await api(`/runs?limit=${RUNS_SHOWN}`);
    if (!runs.length) return h("p", { class: "muted" }, "No runs yet.");
    return h("table", { class: "runs" },
      h("thead", {}, h("tr", {}, ["Run", "Status", "Trigger", "Selection", "Started", "Duration"].map((t) => h("th", {}, t)))),
      h("tbody", {}, runs.map((r) => h("tr", { "data-run": r.run_id, "data-status": r.status },
        h("td", {}, runLink(r.run_id)),
        h("td", {}, badge(r.status)),
        h("td", {}, r.trigger),
        h("td", {}, h("code", {}, r.selection)),
        h("td", {}, when(r.started_at)),
        h("td", { class: "num" }, duration(between(r.started_at, r.finished_at)))))));
  },

  async run(id) {
    const path = `/runs/${encodeURIComponent(id)}`;
    const [record, events, log] = await Promise.all([
      api(path), api(`${path}/events`), api(`${path}/log?tail=${LOG_TAIL}`),
    ]);
    const active = record.status === "running" || record.status === "starting";
    const nodes = [
      h("h2", {}, `Run ${record.run_id} `, badge(record.status)),
      h("dl", { class: "facts" },
        fact("Trigger", record.trigger),
        fact("Selection", h("code", {}, record.selection)),
        fact("Started", when(record.started_at)),
        fact(active ? "Running for" : "Duration", duration(between(record.started_at, record.finished_at))),
        record.exit_code !== null && record.exit_code !== undefined ? fact("Exit code", record.exit_code) : null,
        record.error ? fact("Error", h("span", { class: "error-text run-error" }, record.error)) : null),
      h("h2", {}, "Timeline"),
      gantt(record, events.events),
      failures(record),
      h("h2", {}, "Events"),
      eventTable(events.events),
      h("h2", {}, `Worker log (last ${LOG_TAIL} lines)`),
      h("pre", { class: "log", id: "log" }, log.log || "(empty)"),
    ];
    return { nodes, again: active ? RUN_POLL_MS : null };
  },
};

function fact(name, value) {
  return [h("dt", {}, name), h("dd", {}, value === "" || value === null || value === undefined ? "–" : value)];
}

function links(keys) {
  if (!keys || !keys.length) return h("span", { class: "muted" }, "none");
  return keys.map((k, i) => [i ? ", " : "", assetLink(k)]);
}

function failures(record) {
  const failed = record.assets.filter((a) => a.error);
  if (!failed.length) return null;
  return [h("h2", {}, "Errors"), h("ul", { class: "asset-errors" },
    failed.map((a) => h("li", {}, assetLink(a.key), ` (${a.status}): `, h("span", { class: "error-text" }, a.error))))];
}

function eventTable(events) {
  if (!events.length) return h("p", { class: "muted" }, "No events yet.");
  return h("table", { class: "events small" },
    h("thead", {}, h("tr", {}, ["Time (UTC)", "Event", "Asset", "Detail"].map((t) => h("th", {}, t)))),
    h("tbody", {}, events.map((e) => h("tr", {},
      h("td", {}, utc(e.ts).replace(" UTC", "")),
      h("td", {}, e.event),
      h("td", {}, e.asset ? assetLink(e.asset) : ""),
      h("td", {}, eventDetail(e))))));
}

function eventDetail(e) {
  if (e.detail) return e.detail;
  if (e.error) return e.error;
  if (e.reason) return e.reason;
  if (e.check) return `${e.check.name}: ${e.check.passed ? "passed" : "failed"}${e.check.detail ? ` (${e.check.detail})` : ""}`;
  if (e.status) return e.status;
  if (e.selection) return `selection ${e.selection}`;
  return "";
}

// A bar per asset from its start to its end, on the run's time axis; a tick per retry.
function gantt(record, events) {
  const start = Date.parse(record.started_at);
  const ends = record.assets.map((a) => a.finished_at && Date.parse(a.finished_at)).filter(Boolean);
  const end = Math.max(record.finished_at ? Date.parse(record.finished_at) : now(), ...ends, start + 1);
  const at = (ms) => `${(((ms - start) / (end - start)) * 100).toFixed(3)}%`;
  return h("div", { class: "gantt" }, record.assets.map((a) => {
    const retries = events.filter((e) => e.event === "asset_retry" && e.asset === a.key);
    const began = a.started_at && Date.parse(a.started_at);
    const finished = a.finished_at ? Date.parse(a.finished_at) : now();
    const label = a.attempts > 1 ? `${a.status}, ${a.attempts} attempts` : a.status;
    return h("div", { class: "row", "data-asset": a.key, "data-status": a.status },
      h("span", { class: "small" }, assetLink(a.key)),
      h("div", { class: "track" },
        began ? h("div", {
          class: `bar ${a.status}`, title: `${a.key}: ${label}`,
          "data-left": at(began), "data-width": `${(((finished - began) / (end - start)) * 100).toFixed(3)}%`,
        }) : null,
        retries.map((e) => h("div", { class: "retry", title: `retry after attempt ${e.attempt}: ${e.error}`, "data-left": at(Date.parse(e.ts)) }))),
      h("span", { class: "small muted" }, began ? duration((finished - began) / 1000) : a.status, a.attempts > 1 ? ` ×${a.attempts}` : ""));
  }));
}

// The CSP forbids inline style attributes, so positions are set through the CSSOM.
function placeBars(root) {
  for (const element of root.querySelectorAll("[data-left]")) {
    element.style.left = element.dataset.left;
    if (element.dataset.width) element.style.width = element.dataset.width;
  }
}

// The asset graph left to right: a column per depth (longest path from a root), a box per asset
// coloured by its state, a curve per dependency.
function lineageGraph(catalog) {
  const assets = catalog.assets.filter((e) => !e.side_table_of);
  const byKey = new Map(assets.map((e) => [e.table, e]));
  const depth = new Map();
  const depthOf = (key, seen = new Set()) => {
    if (depth.has(key)) return depth.get(key);
    if (seen.has(key)) return 0;
    seen.add(key);
    const deps = (byKey.get(key)?.deps || []).filter((d) => byKey.has(d));
    const d = deps.length ? 1 + Math.max(...deps.map((x) => depthOf(x, seen))) : 0;
    depth.set(key, d);
    return d;
  };
  assets.forEach((e) => depthOf(e.table));
  const [width, height, gapX, gapY, pad] = [200, 38, 70, 22, 16];
  const rows = new Map();
  const place = new Map();
  for (const e of assets) {
    const d = depth.get(e.table);
    const row = rows.get(d) || 0;
    rows.set(d, row + 1);
    place.set(e.table, { x: pad + d * (width + gapX), y: pad + row * (height + gapY) });
  }
  const columns = Math.max(0, ...depth.values()) + 1;
  const tallest = Math.max(1, ...rows.values());
  const graph = svg("svg", {
    class: "lineage", role: "img", "aria-label": "asset lineage",
    width: pad * 2 + columns * width + (columns - 1) * gapX,
    height: pad * 2 + tallest * height + (tallest - 1) * gapY,
  });
  for (const [from, to] of catalog.edges) {
    const a = place.get(from), b = place.get(to);
    if (!a || !b) continue;
    const [x1, y1, x2, y2] = [a.x + width, a.y + height / 2, b.x, b.y + height / 2];
    graph.append(svg("path", {
      class: "edge", "data-from": from, "data-to": to,
      d: `M${x1},${y1} C${x1 + gapX / 2},${y1} ${x2 - gapX / 2},${y2} ${x2},${y2}`,
    }));
  }
  for (const e of assets) {
    const { x, y } = place.get(e.table);
    const state = assetState(e);
    const label = e.table.length > 27 ? `${e.table.slice(0, 26)}…` : e.table;
    graph.append(svg("g", {
      class: `node ${state}`, "data-asset": e.table, "data-state": state, tabindex: 0,
      onclick: () => { location.hash = `#/assets/${e.table}`; },
      onkeydown: (event) => { if (event.key === "Enter") location.hash = `#/assets/${e.table}`; },
    },
    svg("title", {}, `${e.table}: ${e.state}`),
    svg("rect", { x, y, width, height, rx: 6 }),
    svg("text", { x: x + 10, y: y + 16 }, label),
    svg("text", { x: x + 10, y: y + 31, class: "small" }, `${e.kind === "sql" ? "SQL" : "Rust"} · ${state}${e.version !== null && e.version !== undefined ? ` · v${e.version}` : ""}`)));
  }
  return graph;
}

// ---------------------------------------------------------------- health, token, trigger

async function renderHealth() {
  const banner = document.getElementById("health");
  let report;
  try {
    report = REPORT ? REPORT["/status"] : await fetch("/status", { cache: "no-store" }).then((r) => r.json());
  } catch (_) {
    report = null;
  }
  if (!report) {
    banner.className = "banner unknown";
    banner.textContent = "Health unknown";
    return;
  }
  const bound = report.schedule
    ? `schedule ${report.schedule}: expects the run of ${utc(report.due)}`
    : report.max_age_seconds ? `freshness bound ${duration(report.max_age_seconds)}` : "";
  const running = report.running ? `run ${report.running.run_id || "(unnamed)"} in progress` : "";
  const last = report.last_success ? `last success ${ago(report.last_success.finished_at)} (${report.last_success.run_id})` : "";
  const alerts = (report.alerts || []).map((a) => `${a.unit || "unit"} failed`).join(", ");
  banner.className = `banner ${report.status === "ok" ? "ok" : "bad"}`;
  banner.dataset.status = report.status;
  banner.replaceChildren(
    report.status === "ok" ? "Healthy" : `Unhealthy (${report.status.replace("_", " ")})`,
    h("span", { class: "detail" }, [report.status === "ok" ? null : report.error, last, running, alerts, bound].filter(Boolean).join(" · ")));
}

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  const form = document.getElementById("token-form");
  form.hidden = false;
  if (message) notice(message);
  document.getElementById("token").focus();
}

async function materialize(event) {
  event.preventDefault();
  const button = event.target.querySelector("button");
  const selection = document.getElementById("selection").value.trim();
  button.disabled = true;
  try {
    const { status, body } = await api("/trigger", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(selection ? { select: selection } : {}),
      accept: [202, 409],
    });
    if (status === 202) {
      notice(`Started run ${body.run_id} (${body.selection}).`, "info");
      location.hash = `#/runs/${encodeURIComponent(body.run_id)}`;
    } else {
      notice(`Already running: ${body.error}`, "info");
    }
  } catch (error) {
    if (error.status !== 401) notice(`Materialize failed: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- routing

let timer = null;
let drawn = 0;

async function render() {
  clearTimeout(timer);
  const generation = ++drawn;
  const [, view = "assets", ...rest] = location.hash.split("/");
  const argument = rest.length ? decodeURIComponent(rest.join("/")) : null;
  const name = { assets: argument ? "asset" : "assets", lineage: "lineage", runs: argument ? "run" : "runs" }[view] || "assets";
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("current", link.dataset.view === (view || "assets"));
  }
  renderHealth();
  let again = REPORT ? null : LIVE_REFRESH_MS;
  try {
    const result = await views[name](argument);
    if (generation !== drawn) return;
    const nodes = result && result.nodes ? result.nodes : result;
    if (result && result.nodes && !REPORT) again = result.again || LIVE_REFRESH_MS;
    const log = document.getElementById("log");
    const followLog = !log || log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    show(nodes);
    placeBars(document.getElementById("view"));
    const newLog = document.getElementById("log");
    if (newLog && followLog) newLog.scrollTop = newLog.scrollHeight;
    document.getElementById("token-form").hidden = true;
    if (document.getElementById("notice").className.includes("error")) notice("");
  } catch (error) {
    if (generation !== drawn) return;
    if (error.status === 401) show(h("p", { class: "muted" }, "Waiting for the API token."));
    else if (error.status === 404 && name === "assets" && !REPORT) show(h("p", { class: "muted" }, `${error.message}.`));
    else show(h("p", { class: "error-text" }, error.message));
  }
  const stamp = new Date(now()).toISOString();
  document.getElementById("footer").textContent = REPORT
    ? `Static report made by quantlens report at ${utc(REPORT.generated_at)}; nothing here is live.`
    : `Live from quantlens-trigger · drawn ${utc(stamp)}`;
  if (again) timer = setTimeout(render, again);
}

function start() {
  if (REPORT) {
    for (const element of document.querySelectorAll(".live-only")) element.hidden = true;
  } else {
    document.getElementById("materialize").addEventListener("submit", materialize);
  }
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = document.getElementById("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    document.getElementById("token").value = "";
    notice("");
    render();
  });
  window.addEventListener("hashchange", render);
  render();
}

start();
