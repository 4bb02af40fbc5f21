// The cost chart: cumulative LLM cost deltamem paid against what a full recompute at every refresh would have
// paid, version by version, as a hand-drawn SVG line chart (no chart library, nothing fetched from elsewhere).

import { h, svg, mount, compact, num, percent, clockTime } from "./dom.js";

const METRICS = {
  calls: { paid: "paid_calls", full: "full_calls", unit: "LLM calls" },
  tokens: { paid: "paid_tokens", full: "full_tokens", unit: "tokens" },
  seconds: { paid: "paid_seconds", full: "full_seconds", unit: "LLM seconds" },
};

const HEIGHT = 250;
const MARGIN = { top: 14, right: 78, bottom: 34, left: 52 };

// Round steps (1, 2, 2.5, 5 x 10^n) so axis labels read naturally.
function ticks(min, max, count) {
  const span = max - min || 1;
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const first = Math.ceil(min / step) * step;
  const found = [];
  for (let value = first; value <= max + step * 1e-9; value += step) found.push(Math.round(value * 1e9) / 1e9);
  return { values: found, step };
}

/**
 * Draws `history` (GET /usage/history) into `container` for `metric` ("calls" | "tokens" | "seconds").
 * The points are cumulative, so the chart starts from zero before the first version that cost anything.
 */
export function drawCostChart(container, history, metric) {
  const fields = METRICS[metric];
  if (!history.length) {
    mount(container, h("div", { class: "empty small" },
      h("strong", {}, "No LLM cost yet."),
      " The chart fills in as views are built and refreshed."));
    return;
  }
  const points = history.map((p) => ({ version: p.version, at: p.committed_at, paid: p[fields.paid], full: p[fields.full] }));
  if (points[0].version > 0) points.unshift({ version: Math.max(0, points[0].version - 1), at: null, paid: 0, full: 0 });

  const width = Math.max(320, container.clientWidth || 640);
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const v0 = points[0].version;
  const v1 = Math.max(points[points.length - 1].version, v0 + 1);
  // The y axis ends on the first round tick at or above the highest value.
  const highest = Math.max(1, ...points.map((p) => Math.max(p.full, p.paid)));
  const yTicks = ticks(0, highest, 4);
  if (yTicks.values[yTicks.values.length - 1] < highest) yTicks.values.push(yTicks.values[yTicks.values.length - 1] + yTicks.step);
  const yMax = yTicks.values[yTicks.values.length - 1];
  const x = (version) => MARGIN.left + ((version - v0) / (v1 - v0)) * plotW;
  const y = (value) => MARGIN.top + plotH - (value / (yMax || 1)) * plotH;
  const line = (key) => points.map((p, i) => `${i ? "L" : "M"}${x(p.version).toFixed(1)},${y(p[key]).toFixed(1)}`).join("");

  const chart = svg("svg", {
    class: "cost-chart", viewBox: `0 0 ${width} ${HEIGHT}`, width, height: HEIGHT, role: "img",
    "aria-label": `Cumulative ${fields.unit}: paid against full recompute`,
  });

  // Horizontal grid and the y axis labels.
  for (const value of yTicks.values) {
    chart.append(
      svg("line", { class: "grid", x1: MARGIN.left, x2: MARGIN.left + plotW, y1: y(value), y2: y(value) }),
      svg("text", { class: "tick", x: MARGIN.left - 8, y: y(value) + 4, "text-anchor": "end" }, compact(value)));
  }
  // The x axis: whole versions only.
  const xTicks = ticks(v0, v1, Math.max(2, Math.floor(plotW / 80)));
  for (const version of xTicks.values.filter((v) => Number.isInteger(v))) {
    chart.append(
      svg("line", { class: "axis-tick", x1: x(version), x2: x(version), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4 }),
      svg("text", { class: "tick", x: x(version), y: MARGIN.top + plotH + 17, "text-anchor": "middle" }, `v${version}`));
  }
  chart.append(
    svg("line", { class: "axis", x1: MARGIN.left, x2: MARGIN.left + plotW, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH }),
    svg("text", { class: "axis-label", x: MARGIN.left + plotW / 2, y: HEIGHT - 2, "text-anchor": "middle" }, "version"));

  // The band between the two lines is what incremental maintenance saved.
  const band = points.map((p) => `${x(p.version).toFixed(1)},${y(p.full).toFixed(1)}`)
    .concat(points.slice().reverse().map((p) => `${x(p.version).toFixed(1)},${y(p.paid).toFixed(1)}`));
  chart.append(
    svg("polygon", { class: "saved-band", points: band.join(" ") }),
    svg("path", { class: "line full", d: line("full") }),
    svg("path", { class: "line paid", d: line("paid") }));
  if (points.length <= 40) {
    for (const p of points) {
      chart.append(svg("circle", { class: "dot full", cx: x(p.version), cy: y(p.full), r: 2.5 }),
        svg("circle", { class: "dot paid", cx: x(p.version), cy: y(p.paid), r: 3 }));
    }
  }

  // End labels say the totals where the eye ends up, nudged apart when the lines meet.
  const last = points[points.length - 1];
  let fullY = y(last.full) + 4;
  let paidY = y(last.paid) + 4;
  if (Math.abs(fullY - paidY) < 14) {
    fullY = Math.min(fullY, paidY) - 7;
    paidY = fullY + 14;
  }
  chart.append(
    svg("text", { class: "end-label full", x: x(last.version) + 8, y: fullY }, `full ${compact(last.full)}`),
    svg("text", { class: "end-label paid", x: x(last.version) + 8, y: paidY }, `paid ${compact(last.paid)}`));

  const tooltip = h("div", { class: "chart-tooltip", hidden: true });
  const rule = svg("line", { class: "hover-rule", y1: MARGIN.top, y2: MARGIN.top + plotH, visibility: "hidden" });
  chart.append(rule);
  chart.addEventListener("mousemove", (event) => {
    const box = chart.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * width;
    const nearest = points.reduce((best, p) => (Math.abs(x(p.version) - px) < Math.abs(x(best.version) - px) ? p : best));
    rule.setAttribute("x1", x(nearest.version));
    rule.setAttribute("x2", x(nearest.version));
    rule.setAttribute("visibility", "visible");
    const saved = nearest.full ? 1 - nearest.paid / nearest.full : NaN;
    mount(tooltip,
      h("div", { class: "tt-title" }, `version ${nearest.version}`, nearest.at ? h("span", {}, ` · ${clockTime(nearest.at)}`) : null),
      h("div", {}, h("i", { class: "swatch paid" }), `paid ${num(Math.round(nearest.paid * 100) / 100)}`),
      h("div", {}, h("i", { class: "swatch full" }), `full recompute ${num(Math.round(nearest.full * 100) / 100)}`),
      h("div", { class: "muted" }, `saved ${percent(saved)}`));
    tooltip.hidden = false;
    tooltip.style.left = `${(x(nearest.version) / width) * box.width + 12}px`;
    tooltip.style.top = `${MARGIN.top}px`;
  });
  chart.addEventListener("mouseleave", () => {
    tooltip.hidden = true;
    rule.setAttribute("visibility", "hidden");
  });

  const saved = last.full ? 1 - last.paid / last.full : NaN;
  const legend = h("div", { class: "legend" },
    h("span", {}, h("i", { class: "swatch paid" }), `paid by deltamem`),
    h("span", {}, h("i", { class: "swatch full dashed" }), `full recompute at every refresh`),
    h("span", {}, h("i", { class: "swatch band" }), `saved: ${percent(saved)} of ${fields.unit}`));
  mount(container, legend, h("div", { class: "chart-wrap" }, chart, tooltip));
}
