// Small DOM and formatting helpers. Every piece of data reaches the page through textContent or an attribute set
// here, never through innerHTML, so a row, a sentence or a view name cannot inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

// h("div", {class: "x", onclick: f}, "text", child, [more, children]) -> HTMLElement
export function h(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

// The same for SVG elements, which need their namespace.
export function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "style" && typeof value === "object") Object.assign(node.style, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

// Replace everything inside `node` with `children`.
export function mount(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// --- formatting ---------------------------------------------------------------------------------------------------

const integer = new Intl.NumberFormat("en-US");

export function num(value) {
  return typeof value === "number" ? integer.format(value) : "—";
}

// 12345 -> "12.3k": for chart axes and tight places.
export function compact(value) {
  const abs = Math.abs(value);
  if (abs >= 1e9) return trim(value / 1e9) + "G";
  if (abs >= 1e6) return trim(value / 1e6) + "M";
  if (abs >= 1e4) return trim(value / 1e3) + "k";
  return integer.format(Math.round(value * 100) / 100);
}

function trim(value) {
  return value.toFixed(value >= 100 ? 0 : 1).replace(/\.0$/, "");
}

export function percent(fraction) {
  if (!Number.isFinite(fraction)) return "—";
  return `${Math.round(fraction * 100)}%`;
}

export function seconds(value) {
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 60) return `${value.toFixed(1)} s`;
  return duration(value);
}

export function duration(value) {
  if (value < 60) return `${Math.max(0, Math.round(value))}s`;
  if (value < 3600) return `${Math.floor(value / 60)}m ${Math.round(value % 60)}s`;
  if (value < 86400) return `${Math.floor(value / 3600)}h ${Math.floor((value % 3600) / 60)}m`;
  return `${Math.floor(value / 86400)}d ${Math.floor((value % 86400) / 3600)}h`;
}

// An epoch time (seconds) as "12s ago", "3m ago", "2h ago".
export function ago(epochSeconds) {
  if (typeof epochSeconds !== "number") return "";
  const elapsed = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (elapsed < 5) return "just now";
  if (elapsed < 60) return `${Math.round(elapsed)}s ago`;
  if (elapsed < 3600) return `${Math.floor(elapsed / 60)}m ago`;
  if (elapsed < 86400) return `${Math.floor(elapsed / 3600)}h ago`;
  return `${Math.floor(elapsed / 86400)}d ago`;
}

export function clockTime(epochSeconds) {
  if (typeof epochSeconds !== "number") return "";
  return new Date(epochSeconds * 1000).toLocaleString();
}

// Keys and document ids reach the page as JSON text ('"q1"', '7'); show them as the value they encode.
export function keyText(key) {
  if (typeof key === "string") {
    try {
      const value = JSON.parse(key);
      if (typeof value === "string" || typeof value === "number") return String(value);
    } catch {
      // not JSON: the text itself is the key
    }
    return key;
  }
  return String(key);
}

// A cell value as display text: null stays visibly empty, objects stay readable.
export function cellText(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// Calls fn at most once per `wait` ms, always running the last request after the quiet period, so a burst of
// change events costs a single refetch.
export function throttle(fn, wait) {
  let timer = null;
  let pending = false;
  let last = 0;
  return function run() {
    const now = Date.now();
    if (timer) {
      pending = true;
      return;
    }
    const delay = Math.max(0, last + wait - now);
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
      if (pending) {
        pending = false;
        run();
      }
    }, delay);
  };
}
