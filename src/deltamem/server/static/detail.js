// The detail panel for one output: the row, the attention heat map (output sentences x context sentences), the
// prompt sentences it depends on, what each operator stored, and the decision log of how it was refreshed.

import { h, mount, num, compact, percent, seconds, keyText, cellText } from "./dom.js";
import { request, rowPath } from "./api.js";

// A sequential blue scale; white text on the darker half keeps the numbers legible.
const SCALE = [[244, 246, 251], [205, 216, 246], [142, 166, 236], [76, 110, 219], [36, 60, 158]];

function colour(t) {
  const clamped = Math.min(1, Math.max(0, t));
  const position = clamped * (SCALE.length - 1);
  const index = Math.min(SCALE.length - 2, Math.floor(position));
  const f = position - index;
  const [a, b] = [SCALE[index], SCALE[index + 1]];
  return `rgb(${a.map((c, i) => Math.round(c + (b[i] - c) * f)).join(",")})`;
}

// Context sentences are named C1, C2, ... in the heat map and in the dependency list, so the two read together.
const sentenceLabel = (index) => `C${index + 1}`;

const docId = (doc) => keyText(doc);

const plural = (count, noun) => `${num(count)} ${noun}${count === 1 ? "" : "s"}`;

/**
 * `report` is GET /views/{view}/rows/{key}/explain. Returns the panel's content as one element.
 */
export function renderDetail(view, key, report, { onClose }) {
  const generate = Object.entries(report.dependencies || {});
  return h("div", { class: "detail-inner" },
    h("header", { class: "detail-head" },
      h("div", {},
        h("div", { class: "eyebrow" }, `${view} · output`),
        h("h2", {}, keyText(JSON.stringify(key)))),
      h("button", { class: "icon-button", type: "button", title: "Close", "aria-label": "Close", onclick: onClose }, "×")),
    section("Output", outputFields(report.row)),
    generate.length
      ? generate.map(([op, dependency]) => [
        section("Attention heat map", heatmap(view, key, dependency.attribution), op),
        section("Dependencies", dependencies(dependency), plural(dependency.provenance.length, "prompt sentence")),
      ])
      : section("Attention heat map", h("div", { class: "empty small" },
        h("strong", {}, "No heat map for this output. "),
        "A heat map needs an LLM_GENERATE answer made by a backend with attention (the local model); "
        + "this view's operators keep no attribution.")),
    section("Operators", operators(report.operators)),
    section("Decision log", decisions(report.decisions), plural(report.decisions.length, "decision")));
}

function section(title, body, note) {
  return h("section", { class: "detail-section" },
    h("h3", {}, title, note ? h("span", { class: "note" }, note) : null),
    body);
}

function outputFields(row) {
  if (!row) return h("div", { class: "empty small" }, "This key has no current row: the output was retracted.");
  const entries = Object.entries(row);
  // Long text (the answer) last and full width, short fields as a compact grid above it.
  const short = entries.filter(([, v]) => cellText(v).length <= 60);
  const long = entries.filter(([, v]) => cellText(v).length > 60);
  return h("dl", { class: "fields" },
    short.concat(long).map(([name, value]) => h("div", { class: cellText(value).length > 60 ? "field wide" : "field" },
      h("dt", {}, name),
      h("dd", { class: name === "_error" && value ? "error-text" : null },
        value === null || value === undefined ? h("span", { class: "muted" }, "null") : cellText(value)))));
}

// --- heat map -----------------------------------------------------------------------------------------------------

function heatmap(view, key, attribution) {
  if (!attribution || !attribution.matrix || !attribution.matrix.length) {
    return h("div", { class: "empty small" },
      h("strong", {}, "No attention for this answer. "),
      "The heat map needs an LLM_GENERATE answer made by a backend with attention (the local model); "
      + "an answer from an API backend, or a reused one, has none.");
  }
  const { matrix, output_sentences: outputs, context } = attribution;
  const docs = (attribution.columns || []).map((column) => docId(column[0]));
  const peak = Math.max(1e-9, ...matrix.flat());

  const grid = h("div", {
    class: "heatmap",
    style: { gridTemplateColumns: `minmax(120px, 190px) repeat(${context.length}, minmax(34px, 1fr))` },
  });
  // Header row: the document each context sentence comes from, and its C-number.
  grid.append(h("div", { class: "hm-corner" }, h("span", {}, "output ↓ · context →")));
  context.forEach((sentence, j) => {
    grid.append(h("div", { class: "hm-col", title: `${sentenceLabel(j)} (${docs[j] || "?"}): ${sentence}` },
      h("span", { class: "hm-col-id" }, sentenceLabel(j)),
      h("span", { class: "hm-col-doc" }, docs[j] || "")));
  });
  matrix.forEach((weights, i) => {
    grid.append(h("div", { class: "hm-row", title: outputs[i] }, outputs[i]));
    weights.forEach((weight, j) => {
      const t = weight / peak;
      grid.append(h("div", {
        class: "hm-cell",
        style: { background: colour(t), color: t > 0.55 ? "#fff" : "#1d2330" },
        title: `“${outputs[i]}” ← ${sentenceLabel(j)} “${context[j]}”: ${weight.toFixed(3)}`,
      }, weight >= 0.005 ? weight.toFixed(2) : ""));
    });
  });

  const legend = h("div", { class: "hm-legend" },
    h("span", {}, "0"),
    h("span", { class: "hm-gradient", style: { background: `linear-gradient(90deg, ${SCALE.map((_, i) => colour(i / (SCALE.length - 1))).join(", ")})` } }),
    h("span", {}, peak.toFixed(2)),
    h("span", { class: "muted" }, "share of attention each output sentence paid to each context sentence"));

  const png = h("a", { class: "link-button", href: "#", download: `${view}-${keyText(JSON.stringify(key))}-heatmap.png` }, "PNG");
  // The PNG route needs the bearer token too, so it is fetched here and handed over as a blob URL.
  png.addEventListener("click", async (event) => {
    if (png.dataset.ready) return;
    event.preventDefault();
    try {
      const blob = await (await request(`${rowPath(view, key)}/heatmap.png`)).blob();
      png.href = URL.createObjectURL(blob);
      png.dataset.ready = "1";
      png.click();
    } catch (error) {
      png.textContent = "PNG unavailable";
      png.title = error.message;
    }
  });
  return h("div", {}, h("div", { class: "hm-scroll" }, grid), h("div", { class: "hm-foot" }, legend, png));
}

// --- dependencies -------------------------------------------------------------------------------------------------

function dependencies(dependency) {
  const attribution = dependency.attribution;
  // Each sentence's strongest pull on any output sentence, to rank what the answer rests on.
  const weightOf = new Map();
  if (attribution && attribution.columns) {
    attribution.columns.forEach((column, j) => {
      const weight = Math.max(0, ...attribution.matrix.map((row) => row[j] || 0));
      weightOf.set(`${column[0]}|${column[1]}`, { index: j, weight });
    });
  }
  const spans = dependency.key_spans || [];
  const stale = dependency.provenance.filter((p) => !p.current).length;
  const list = h("ol", { class: "deps" }, dependency.provenance.map((entry, i) => {
    const found = weightOf.get(`${entry.doc}|${entry.position}`);
    const weight = found ? found.weight : null;
    return h("li", { class: entry.current ? "dep" : "dep stale" },
      h("span", { class: "dep-id" }, sentenceLabel(found ? found.index : i)),
      h("div", { class: "dep-body" },
        h("div", { class: "dep-text" }, entry.text),
        h("div", { class: "dep-meta" },
          h("span", { class: "doc-chip", title: "document" }, docId(entry.doc)),
          h("span", { title: "sentence of the document, and the document's version the prompt used" },
            `sentence ${entry.position + 1} · v${entry.doc_version}`),
          entry.current
            ? h("span", { class: "current" }, "✓ current")
            : h("span", { class: "badge warn", title: "The document changed since this answer was made: this sentence is no longer in it" }, "no longer current"))),
      weight === null ? h("span") : h("span", { class: "dep-weight", title: "Strongest attention any output sentence paid it" },
        h("span", { class: "bar" }, h("span", { style: { width: `${Math.round(weight * 100)}%` } })),
        percent(weight)));
  }));
  return h("div", {},
    spans.length ? h("div", { class: "spans" }, h("span", { class: "muted" }, "Key spans copied:"),
      spans.map((span) => h("span", { class: "span-chip" }, span))) : null,
    stale ? h("div", { class: "callout warn" }, `${stale} of ${dependency.provenance.length} sentences ${stale === 1 ? "is" : "are"} no longer current: the answer rests on text that has since changed.`) : null,
    list);
}

// --- operators and decisions --------------------------------------------------------------------------------------

function operators(ops) {
  const entries = Object.entries(ops || {});
  if (!entries.length) return h("div", { class: "empty small" }, "No operator state for this output.");
  return h("table", { class: "mini" },
    h("thead", {}, h("tr", {}, ["operator", "calls", "prompt tok", "output tok", "time", "status"].map((c) => h("th", {}, c)))),
    h("tbody", {}, entries.map(([op, entry]) => h("tr", {},
      h("td", { class: "mono" }, op),
      h("td", { class: "num" }, num(entry.cost.calls)),
      h("td", { class: "num" }, num(entry.cost.prompt_tokens)),
      h("td", { class: "num" }, num(entry.cost.output_tokens)),
      h("td", { class: "num" }, seconds(entry.cost.seconds)),
      h("td", {}, entry.error ? h("span", { class: "badge bad", title: entry.error }, "error") : h("span", { class: "badge ok" }, "ok"))))));
}

const STRATEGY_CLASS = { skip: "ok", patch: "info", new: "accent", full: "accent", regenerate: "warn", retract: "muted", shadow: "purple" };

function decisions(list) {
  if (!list.length) return h("div", { class: "empty small" }, "No decisions recorded for this output.");
  const newest = list.slice().sort((a, b) => b.version - a.version);
  return h("table", { class: "mini decisions" },
    h("thead", {}, h("tr", {}, ["version", "strategy", "reason", "calls", "tokens", "time"].map((c) => h("th", {}, c)))),
    h("tbody", {}, newest.map((d) => h("tr", {},
      h("td", { class: "num" }, `v${d.version}`),
      h("td", {}, h("span", { class: `badge ${STRATEGY_CLASS[d.strategy] || "muted"}` }, d.strategy)),
      h("td", { class: "reason" }, d.reason, d.evidence !== null && d.evidence !== undefined
        ? h("div", { class: "muted" }, `evidence: ${d.evidence.toFixed(3)} of attention`) : null),
      h("td", { class: "num" }, num(d.calls)),
      h("td", { class: "num", title: `${d.prompt_tokens} prompt tokens (${d.reused_tokens} of them reused from the cache), ${d.output_tokens} output tokens` },
        `${compact(d.prompt_tokens)} in · ${compact(d.output_tokens)} out`,
        d.reused_tokens ? h("div", { class: "muted" }, `${compact(d.reused_tokens)} reused`) : null),
      h("td", { class: "num" }, seconds(d.seconds))))));
}

export async function loadDetail(view, key) {
  return (await request(`${rowPath(view, key)}/explain`)).json();
}
