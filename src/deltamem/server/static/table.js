// The live table of one view: built from GET /views/{view}, then kept current by applying the subscription's
// change rows one by one, with no reload. Rows are identified by key, the same key the change rows carry.

import { h, mount, cellText } from "./dom.js";

const ERROR_COLUMN = "_error";
const REMOVE_AFTER_MS = 900; // long enough to see a row go; an update's +1 arriving meanwhile cancels it

// Keys sort as the server sorts them: numbers numerically, then strings.
function compareKeys(a, b) {
  const [sa, sb] = [typeof a === "string", typeof b === "string"];
  if (sa !== sb) return sa ? 1 : -1;
  return a < b ? -1 : a > b ? 1 : 0;
}

export class LiveTable {
  /**
   * `read` is GET /views/{view}: {columns, rows, keys, version}. `onOpen(key)` is called when a row is clicked.
   */
  constructor(root, read, { onOpen }) {
    this.root = root;
    this.onOpen = onOpen;
    this.columns = read.columns.slice();
    this.version = read.version;
    this.selectedKey = undefined;
    this.entries = new Map(); // JSON key -> {key, row, tr, removal}
    read.rows.forEach((row, i) => this.entries.set(JSON.stringify(read.keys[i]), { key: read.keys[i], row }));
    this.render();
  }

  get size() {
    return [...this.entries.values()].filter((entry) => !entry.removal).length;
  }

  render() {
    this.body = h("tbody");
    const sorted = [...this.entries.values()].sort((a, b) => compareKeys(a.key, b.key));
    for (const entry of sorted) {
      entry.tr = this.rowElement(entry);
      this.body.append(entry.tr);
    }
    this.empty = h("div", { class: "empty table-empty", hidden: sorted.length > 0 },
      h("strong", {}, "No rows yet."), " Rows appear here the moment the view computes them.");
    const table = h("table", { class: "live-table", id: "live-table" },
      h("thead", {}, h("tr", {}, this.columns.map((column) => h("th", { class: column === ERROR_COLUMN ? "error-col" : null },
        column === ERROR_COLUMN ? "error" : column)))),
      this.body);
    mount(this.root, h("div", { class: "table-scroll" }, table), this.empty);
  }

  rowElement(entry) {
    const tr = h("tr", {
      tabindex: 0, dataset: { key: JSON.stringify(entry.key) },
      class: this.selectedKey !== undefined && JSON.stringify(this.selectedKey) === JSON.stringify(entry.key) ? "selected" : null,
      onclick: () => this.onOpen(entry.key),
      onkeydown: (event) => {
        if (event.key === "Enter") this.onOpen(entry.key);
      },
    });
    this.fillRow(tr, entry.row);
    return tr;
  }

  fillRow(tr, row) {
    mount(tr, this.columns.map((column) => this.cell(column, row[column])));
  }

  cell(column, value) {
    if (column === ERROR_COLUMN) {
      return h("td", { class: "error-col" }, value ? h("span", { class: "badge bad", title: cellText(value) }, "failed") : "");
    }
    if (value === null || value === undefined) return h("td", { class: "null" }, "null");
    const text = cellText(value);
    const numeric = typeof value === "number";
    // Long text is clamped to a few lines; the full value is one hover (or one click, in the detail panel) away.
    return h("td", { class: numeric ? "num" : text.length > 80 ? "long" : null, title: text.length > 80 ? text : null },
      h("div", { class: "clamp" }, text));
  }

  // One change row from the subscription: {version, diff: +1 | -1, key, row}.
  apply(change) {
    this.version = Math.max(this.version, change.version);
    const id = JSON.stringify(change.key);
    const entry = this.entries.get(id);
    if (change.diff < 0) {
      if (!entry || entry.removal) return;
      // Retractions come first within a version; wait briefly so an update (-1 then +1) reads as one change.
      entry.tr.classList.add("removing");
      entry.removal = setTimeout(() => {
        entry.tr.remove();
        this.entries.delete(id);
        this.updateEmpty();
      }, REMOVE_AFTER_MS);
      return;
    }
    if (this.addColumns(change.row)) {
      if (entry) clearTimeout(entry.removal);
      this.entries.set(id, { key: change.key, row: change.row, removal: null });
      this.render();
      this.flash(this.entries.get(id).tr, entry ? "updated" : "inserted");
      return;
    }
    if (entry) {
      clearTimeout(entry.removal);
      entry.removal = null;
      entry.row = change.row;
      entry.tr.classList.remove("removing");
      this.fillRow(entry.tr, change.row);
      this.flash(entry.tr, "updated");
    } else {
      const added = { key: change.key, row: change.row, removal: null };
      added.tr = this.rowElement(added);
      this.entries.set(id, added);
      this.insertSorted(added);
      this.flash(added.tr, "inserted");
    }
    this.updateEmpty();
  }

  // A change row can bring a column the first read did not have (an `_error` appearing): widen the table.
  addColumns(row) {
    const missing = Object.keys(row).filter((column) => !this.columns.includes(column));
    if (!missing.length) return false;
    const withoutError = this.columns.filter((c) => c !== ERROR_COLUMN);
    const hasError = this.columns.includes(ERROR_COLUMN) || missing.includes(ERROR_COLUMN);
    this.columns = [...withoutError, ...missing.filter((c) => c !== ERROR_COLUMN), ...(hasError ? [ERROR_COLUMN] : [])];
    return true;
  }

  insertSorted(entry) {
    const after = [...this.entries.values()]
      .filter((other) => other !== entry && other.tr && other.tr.isConnected && compareKeys(other.key, entry.key) > 0)
      .sort((a, b) => compareKeys(a.key, b.key))[0];
    this.body.insertBefore(entry.tr, after ? after.tr : null);
  }

  // Restarting the animation needs the class removed and a reflow in between.
  flash(tr, kind) {
    tr.classList.remove("inserted", "updated");
    void tr.offsetWidth;
    tr.classList.add(kind);
  }

  select(key) {
    this.selectedKey = key;
    for (const entry of this.entries.values()) {
      if (entry.tr) entry.tr.classList.toggle("selected", key !== undefined && JSON.stringify(entry.key) === JSON.stringify(key));
    }
  }

  updateEmpty() {
    this.empty.hidden = this.size > 0;
  }
}
