// The deltamem console: views and their freshness, a live table per view, one output's explanation, the cost
// of incremental maintenance against full recompute, and the commit log. Plain ES modules, no build step.

import { h, $, mount, num, compact, percent, duration, ago, clockTime, keyText, throttle } from "./dom.js";
import { getJSON, subscribe, takeTokenFromUrl, viewPath, ApiError } from "./api.js";
import { LiveTable } from "./table.js";
import { renderDetail, loadDetail } from "./detail.js";
import { drawCostChart } from "./chart.js";

const VIEWS_EVERY_MS = 4_000; // freshness of every view: a subscription only covers the selected one
const ACTIVITY_EVERY_MS = 10_000; // cost and commit log, for commits that touch no selected view
const CLOCK_EVERY_MS = 5_000; // "12s ago" labels

const state = {
  views: [],
  selected: null,
  table: null,
  subscription: null,
  detailKey: undefined,
  history: [],
  log: [],
  usage: null,
  metric: "calls",
  newestLogVersion: null,
};

// --- views and freshness ------------------------------------------------------------------------------------------

function freshness(view) {
  if (view.version === null) return { cls: "warn", text: "building", detail: "not built yet" };
  if (view.lag_versions === 0) return { cls: "ok", text: "fresh", detail: "fresh" };
  return {
    cls: view.lag_seconds > 30 ? "bad" : "warn",
    text: `${view.lag_versions} behind`,
    detail: `${view.lag_versions} version${view.lag_versions === 1 ? "" : "s"} behind · ${duration(view.lag_seconds)} lag`,
  };
}

// The operator chain with arrows a line can't break inside ("->" may wrap after its hyphen).
const chain = (definition) => definition.replaceAll(" -> ", " → ");

function savedFraction(paid, full) {
  return full ? 1 - paid / full : NaN;
}

function renderViewList() {
  const root = $("#views");
  if (!state.views.length) {
    mount(root, h("div", { class: "empty small dark" }, "No views yet."));
    return;
  }
  mount(root, state.views.map((view) => {
    const fresh = freshness(view);
    const saved = savedFraction(view.calls, view.full_recompute_calls);
    const share = view.full_recompute_calls ? Math.min(1, view.calls / view.full_recompute_calls) : 0;
    return h("button", {
      type: "button", class: view.name === state.selected ? "view-item active" : "view-item",
      dataset: { view: view.name }, onclick: () => selectView(view.name),
      "aria-current": view.name === state.selected ? "true" : null,
    },
    h("div", { class: "vi-top" },
      h("span", { class: "vi-name" }, view.name),
      h("span", { class: `badge ${fresh.cls}`, title: fresh.detail }, fresh.text)),
    h("div", { class: "vi-def", title: view.definition }, chain(view.definition)),
    h("div", { class: "vi-meta" },
      h("span", {}, `${num(view.rows)} rows`),
      view.version !== null ? h("span", {}, `v${view.version}`) : null,
      view.lag_versions ? h("span", { class: "lag" }, `${duration(view.lag_seconds)} lag`) : null,
      view.error_rows ? h("span", { class: "errors" }, `${num(view.error_rows)} failed`) : null),
    h("div", { class: "vi-cost", title: `${view.calls} calls paid; a full recompute at each of ${view.refreshes} refreshes would have paid ${view.full_recompute_calls}` },
      h("span", { class: "bar" }, h("span", { style: { width: `${Math.round(share * 100)}%` } })),
      h("span", { class: "vi-calls" }, `${compact(view.calls)} / ${compact(view.full_recompute_calls)} calls`),
      h("span", { class: "vi-saved" }, Number.isFinite(saved) ? `${percent(saved)} saved` : "")));
  }));
}

function renderKpis() {
  const latest = state.views.length ? state.views[0].latest_version : state.log.length ? state.log[0].version : 0;
  const usage = state.usage;
  const paid = usage ? usage.total.calls : 0;
  const full = usage ? usage.full_recompute_calls : 0;
  const tokens = usage ? usage.total.prompt_tokens + usage.total.output_tokens : 0;
  const reused = usage ? usage.total.reused_tokens : 0;
  const kpi = (label, value, note, cls) => h("div", { class: `kpi ${cls || ""}` },
    h("div", { class: "kpi-label" }, label), h("div", { class: "kpi-value" }, value), note ? h("div", { class: "kpi-note" }, note) : null);
  mount($("#kpis"),
    kpi("latest version", `v${latest}`, `${state.views.length} views`),
    kpi("LLM calls paid", compact(paid), `${compact(tokens)} tokens`),
    kpi("full recompute", compact(full), "calls it would have paid"),
    kpi("saved", percent(savedFraction(paid, full)), `${compact(reused)} tokens reused`, "good"));
}

async function refreshViews() {
  try {
    state.views = await getJSON("/views");
    setBanner(null);
  } catch (error) {
    setBanner(`Cannot reach the server (${error.message}); retrying.`);
    return;
  }
  renderViewList();
  renderKpis();
  const current = state.views.find((view) => view.name === state.selected);
  if (current) renderViewHead(current);
  if (!state.selected || (!current && !state.subscription)) {
    const wanted = new URLSearchParams(location.hash.slice(1)).get("view");
    const pick = state.views.find((v) => v.name === wanted) || state.views[0];
    if (pick) selectView(pick.name);
    else renderNoViews();
  }
}

// --- the selected view --------------------------------------------------------------------------------------------

const LIVE_TEXT = { connecting: "connecting", live: "live", reconnecting: "reconnecting", dropped: "view dropped", closed: "" };

function setLive(status) {
  const indicator = $("#live");
  indicator.className = `live ${status}`;
  indicator.dataset.state = status;
  mount(indicator, h("span", { class: "dot" }), LIVE_TEXT[status] || status);
  if (status === "dropped") {
    state.subscription = null;
    refreshViews();
  }
}

function renderViewHead(view) {
  const fresh = freshness(view);
  const version = Math.max(view.version ?? 0, state.table ? state.table.version : 0);
  mount($("#view-title"), view.name);
  mount($("#view-def"), chain(view.definition));
  mount($("#view-version"), `version ${version}`);
  const badge = $("#view-fresh");
  badge.className = `badge ${fresh.cls}`;
  mount(badge, fresh.detail);
  mount($("#view-count"), state.table ? `${num(state.table.size)} rows` : "");
}

function renderNoViews() {
  state.selected = null;
  mount($("#view-title"), "No views yet");
  mount($("#view-def"), "");
  mount($("#view-version"), "");
  mount($("#view-count"), "");
  $("#view-fresh").className = "badge hidden";
  mount($("#live"));
  $("#view-foot").hidden = true;
  mount($("#view-body"), h("div", { class: "empty big" },
    h("h3", {}, "Nothing to show until a view exists"),
    h("p", {}, "Create a table and a continuous view over it, from Python or with POST /sql, for example:"),
    h("pre", {}, "CREATE TABLE docs (id TEXT PRIMARY KEY, text TEXT);\n"
      + "CREATE CONTINUOUS VIEW summaries AS\n  SELECT id, SEM_MAP('In five words: {text}') AS summary FROM docs;"),
    h("p", {}, "This page picks it up within a few seconds.")));
}

async function selectView(name) {
  if (state.subscription) state.subscription.close();
  state.subscription = null;
  state.selected = name;
  history.replaceState(null, "", `#view=${encodeURIComponent(name)}`);
  closeDetail();
  renderViewList();
  const view = state.views.find((v) => v.name === name);
  if (view) renderViewHead(view);
  $("#view-foot").hidden = false;
  mount($("#view-body"), h("div", { class: "empty small" }, "Loading rows…"));
  let read;
  try {
    read = await getJSON(viewPath(name));
  } catch (error) {
    mount($("#view-body"), h("div", { class: "empty small" }, `Could not read ${name}: ${error.message}`));
    return;
  }
  if (state.selected !== name) return; // another view was picked while this one loaded
  state.table = new LiveTable($("#view-body"), read, { onOpen: openDetail });
  if (view) renderViewHead(view);
  // Subscribing after exactly the version just read: every later change arrives once, none is missed.
  state.subscription = subscribe(name, read.version, {
    onChange: (change) => onChange(name, change),
    onState: (status) => {
      if (state.selected === name) setLive(status);
    },
  });
}

function onChange(name, change) {
  if (state.selected !== name || !state.table) return;
  state.table.apply(change);
  const view = state.views.find((v) => v.name === name);
  if (view) renderViewHead(view);
  if (state.detailKey !== undefined && JSON.stringify(change.key) === JSON.stringify(state.detailKey)) reloadDetail();
  refreshViewsSoon();
  refreshActivitySoon();
}

// --- one output ---------------------------------------------------------------------------------------------------

async function openDetail(key) {
  state.detailKey = key;
  if (state.table) state.table.select(key);
  const panel = $("#detail");
  panel.hidden = false;
  $("#main").classList.add("with-detail");
  mount(panel, h("div", { class: "empty small" }, `Loading ${keyText(JSON.stringify(key))}…`));
  await showDetail(state.selected, key);
}

async function showDetail(view, key) {
  const panel = $("#detail");
  let report;
  try {
    report = await loadDetail(view, key);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) report = null;
    else {
      mount(panel, h("div", { class: "empty small" }, `Could not explain this output: ${error.message}`));
      return;
    }
  }
  // Only draw if this is still the output being looked at.
  if (state.selected !== view || JSON.stringify(state.detailKey) !== JSON.stringify(key)) return;
  if (!report) {
    mount(panel, h("div", { class: "empty small" }, "This output no longer exists."));
    return;
  }
  const scroll = panel.scrollTop;
  mount(panel, renderDetail(view, key, report, { onClose: closeDetail }));
  panel.scrollTop = scroll;
}

const reloadDetail = throttle(() => {
  if (state.detailKey !== undefined) showDetail(state.selected, state.detailKey);
}, 1000);

function closeDetail() {
  state.detailKey = undefined;
  if (state.table) state.table.select(undefined);
  const panel = $("#detail");
  panel.hidden = true;
  mount(panel);
  $("#main").classList.remove("with-detail");
  requestAnimationFrame(drawChart); // the chart's width changed
}

// --- cost and commit log ------------------------------------------------------------------------------------------

async function refreshActivity() {
  // Each part is drawn from what answered, so one failing route leaves the others current.
  const [history, log, usage] = await Promise.allSettled([getJSON("/usage/history"), getJSON("/log?limit=30"), getJSON("/usage")]);
  if (history.status === "fulfilled") {
    state.history = history.value;
    drawChart();
  }
  if (log.status === "fulfilled") {
    state.log = log.value;
    renderLog();
  }
  if (usage.status === "fulfilled") state.usage = usage.value;
  renderKpis();
}

function drawChart() {
  drawCostChart($("#cost-chart"), state.history, state.metric);
}

function changeChips(counts) {
  const chips = [];
  if (counts.inserted) chips.push(h("span", { class: "chip ins", title: "rows inserted" }, `+${num(counts.inserted)}`));
  if (counts.updated) chips.push(h("span", { class: "chip upd", title: "rows updated" }, `~${num(counts.updated)}`));
  if (counts.deleted) chips.push(h("span", { class: "chip del", title: "rows deleted" }, `−${num(counts.deleted)}`));
  if (counts.expired) chips.push(h("span", { class: "chip exp", title: "rows expired (TTL)" }, `${num(counts.expired)} expired`));
  return chips;
}

function renderLog() {
  const root = $("#changelog");
  if (!state.log.length) {
    mount(root, h("div", { class: "empty small" }, "No commits yet."));
    return;
  }
  const previous = state.newestLogVersion;
  state.newestLogVersion = state.log[0].version;
  mount(root, h("table", { class: "log" },
    h("tbody", {}, state.log.map((commit) => {
      const tables = Object.entries(commit.tables);
      return h("tr", { class: previous !== null && commit.version > previous ? "inserted" : null, dataset: { version: commit.version } },
        h("td", { class: "log-version" }, `v${commit.version}`),
        h("td", { class: "log-time", title: clockTime(commit.committed_at), dataset: { at: commit.committed_at ?? "" } }, ago(commit.committed_at)),
        h("td", { class: "log-changes" }, tables.length
          ? tables.map(([table, counts]) => h("span", { class: "log-table" }, h("span", { class: "tname" }, table), changeChips(counts)))
          : h("span", { class: "muted" }, "no row changes")));
    }))));
}

// Only the "ago" texts change with time; updating them in place keeps the row highlights running.
function tickClock() {
  for (const cell of document.querySelectorAll(".log-time[data-at]")) {
    const at = Number(cell.dataset.at);
    if (at) cell.textContent = ago(at);
  }
}

const refreshViewsSoon = throttle(refreshViews, 1000);
const refreshActivitySoon = throttle(refreshActivity, 2000);

// --- page chrome --------------------------------------------------------------------------------------------------

function setBanner(text) {
  const banner = $("#banner");
  banner.hidden = !text;
  mount(banner, text || "");
}

function setupMetricToggle() {
  for (const button of document.querySelectorAll("#metric button")) {
    button.addEventListener("click", () => {
      state.metric = button.dataset.metric;
      for (const other of document.querySelectorAll("#metric button")) other.classList.toggle("active", other === button);
      drawChart();
    });
  }
}

function start() {
  takeTokenFromUrl();
  setupMetricToggle();
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.detailKey !== undefined) closeDetail();
  });
  new ResizeObserver(throttle(drawChart, 150)).observe($("#cost-chart"));
  // A link or the back button can name another view (#view=name).
  window.addEventListener("hashchange", () => {
    const wanted = new URLSearchParams(location.hash.slice(1)).get("view");
    if (wanted && wanted !== state.selected && state.views.some((v) => v.name === wanted)) selectView(wanted);
  });
  refreshViews();
  refreshActivity();
  setInterval(refreshViews, VIEWS_EVERY_MS);
  setInterval(refreshActivity, ACTIVITY_EVERY_MS);
  setInterval(tickClock, CLOCK_EVERY_MS);
}

start();
