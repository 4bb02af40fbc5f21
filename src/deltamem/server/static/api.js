// Talking to the server: every request carries the bearer token, a 401 asks for one and retries, and a view's
// subscription is read with fetch() because EventSource cannot send an Authorization header.

import { h } from "./dom.js";

const TOKEN_KEY = "deltamem.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

// `#token=...` in the address is taken once into localStorage and removed from the address bar, so the secret
// does not stay in the history or get copied along with a link.
export function takeTokenFromUrl() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = params.get("token");
  if (!token) return;
  localStorage.setItem(TOKEN_KEY, token);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
}

function authHeaders(extra = {}) {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

// One token prompt at a time: every request that gets a 401 while it is open waits for the same answer.
let asking = null;

export function askForToken(message) {
  if (!asking) {
    asking = showTokenForm(message).finally(() => {
      asking = null;
    });
  }
  return asking;
}

function showTokenForm(message) {
  return new Promise((resolve) => {
    const input = h("input", {
      type: "password", name: "token", autocomplete: "current-password", placeholder: "bearer token",
      required: true, "aria-label": "Access token",
    });
    const form = h("form", { class: "token-form" },
      h("h2", {}, "Access token needed"),
      h("p", {}, message || "This server was started with a token. Enter it to continue; it is kept in this "
        + "browser's local storage."),
      input,
      h("div", { class: "token-actions" }, h("button", { type: "submit", class: "primary" }, "Connect")));
    const overlay = h("div", { class: "overlay", role: "dialog", "aria-modal": "true" }, form);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      localStorage.setItem(TOKEN_KEY, input.value.trim());
      overlay.remove();
      resolve();
    });
    document.body.appendChild(overlay);
    input.focus();
  });
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return response.statusText;
  }
}

// fetch() with the token; on a 401 asks for a token and tries again. Throws ApiError for any other failure.
export async function request(path, { method = "GET", body, signal, headers = {} } = {}) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, signal, headers: authHeaders(headers) };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      await askForToken(attempt ? "That token was not accepted. Check it and try again." : undefined);
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    return response;
  }
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

export const viewPath = (view) => `/views/${encodeURIComponent(view)}`;

// Row keys go into URLs as JSON, so the string "7" and the integer 7 stay different keys.
export const rowPath = (view, key) => `${viewPath(view)}/rows/${encodeURIComponent(JSON.stringify(key))}`;

// --- the subscription ---------------------------------------------------------------------------------------------

const IDLE_LIMIT_MS = 45_000; // the server sends a keep-alive every 15 s; three missed means the link is dead
// A server that accepted the connection but sends no answer (one shutting down) must not hold the page for 45 s.
const CONNECT_LIMIT_MS = 5_000;

/**
 * Follows a view's change rows from `after` on. Calls onChange({version, diff, key, row}) for each, and
 * onState("connecting" | "live" | "reconnecting" | "dropped" | "closed"). Reconnects by itself with
 * Last-Event-ID, so a broken connection loses and repeats nothing. Returns {close()}.
 */
export function subscribe(view, after, { onChange, onState }) {
  const controller = new AbortController();
  let lastEventId = null;
  let closed = false;

  async function run() {
    let backoff = 500;
    onState("connecting");
    while (!closed) {
      try {
        const outcome = await connectOnce();
        if (outcome === "dropped") {
          onState("dropped");
          return;
        }
        backoff = 500; // the server ended a healthy stream: reconnect promptly
      } catch (error) {
        if (closed) return;
        if (error instanceof ApiError && error.status === 404) {
          onState("dropped");
          return;
        }
      }
      if (closed) return;
      onState("reconnecting");
      await sleep(backoff + Math.random() * 250);
      backoff = Math.min(backoff * 2, 5_000);
    }
  }

  async function connectOnce() {
    const headers = { Accept: "text/event-stream" };
    let path = `${viewPath(view)}/subscribe`;
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    else path += `?after=${encodeURIComponent(after)}`;
    // A per-connection controller, so the idle watchdog can end this connection without ending the subscription.
    const connection = new AbortController();
    const abort = () => connection.abort();
    controller.signal.addEventListener("abort", abort);
    let watchdog = setTimeout(abort, CONNECT_LIMIT_MS);
    try {
      const response = await request(path, { headers, signal: connection.signal });
      clearTimeout(watchdog);
      watchdog = setTimeout(abort, IDLE_LIMIT_MS);
      onState("live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new EventStreamParser((event) => {
        if (event.id) lastEventId = event.id;
        if (event.type === "dropped") return "dropped";
        if (event.type === "change" && event.data) onChange(JSON.parse(event.data));
        return null;
      });
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return "ended";
        clearTimeout(watchdog);
        watchdog = setTimeout(abort, IDLE_LIMIT_MS);
        if (parser.push(value) === "dropped") return "dropped";
      }
    } finally {
      clearTimeout(watchdog);
      controller.signal.removeEventListener("abort", abort);
    }
  }

  run();
  return {
    close() {
      closed = true;
      controller.abort();
      onState("closed");
    },
  };
}

// The text/event-stream format, as the HTML standard defines it: fields until a blank line, comments start with
// ':', several data lines join with newlines.
class EventStreamParser {
  constructor(dispatch) {
    this.dispatch = dispatch;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.type = "";
    this.data = [];
    this.id = null;
  }

  // Feeds a chunk of text; returns what dispatch returned for an event that should end the stream, else null.
  push(chunk) {
    this.buffer += chunk;
    const lines = this.buffer.split(/\r\n|\n|\r(?!$)/);
    this.buffer = lines.pop(); // an incomplete last line waits for the next chunk
    for (const line of lines) {
      const outcome = this.line(line);
      if (outcome) return outcome;
    }
    return null;
  }

  line(line) {
    if (line === "") {
      const event = { type: this.type || "message", data: this.data.join("\n"), id: this.id };
      const dispatched = this.data.length || this.id ? this.dispatch(event) : null;
      this.reset();
      return dispatched;
    }
    if (line.startsWith(":")) return null; // a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
    return null;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

