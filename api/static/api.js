// Calls to the /v1 API with the key the user entered, and the small DOM and formatting
// helpers every view uses.

export const KEY_STORAGE = "sagetrain.apiKey";
export const ENDED = new Set(["succeeded", "failed", "cancelled"]);
export const auth = { key: localStorage.getItem(KEY_STORAGE) || "" };

export class ApiError extends Error {
  constructor(message, status, error) {
    super(message);
    this.status = status;
    this.error = error;  // the OpenAI-shaped {message, type, param, code}, when there is one
  }
}

// `json` is sent as a JSON body, `form` (FormData) as multipart.
export async function api(path, { method = "GET", json, form } = {}) {
  const headers = { Authorization: `Bearer ${auth.key}` };
  let body = form;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let error = null;
    try {
      error = (await response.json()).error;
      message = error.message || message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(message, response.status, error);
  }
  return response;
}

export const getJson = async (path) => (await api(path)).json();
export const postJson = async (path, json) => (await api(path, { method: "POST", json })).json();
export const jobPath = (id, rest = "") => `/v1/fine_tuning/jobs/${encodeURIComponent(id)}${rest}`;

export const $ = (id) => document.getElementById(id);

// An element with attributes (null ones left out) and children (null ones left out).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    // The page's Content-Security-Policy refuses style attributes; the CSSOM is allowed.
    if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

const SHORT_TIME = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" };
export const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString(undefined, SHORT_TIME) : "");

export function fmt(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "—" : String(value);
  const size = Math.abs(value);
  if (size !== 0 && (size < 1e-3 || size >= 1e5)) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}

export function notice(message) {
  $("notice").textContent = message || "";
  $("notice").hidden = !message;
}
