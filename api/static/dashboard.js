// The sagetrain dashboard: the caller's jobs and, for one job, its curves, events and
// checkpoints. Plain browser JavaScript; every call goes to the /v1 API with the key the
// user entered (EventSource cannot send an Authorization header, so this polls).
"use strict";

const POLL_MS = 2000;
const KEY_STORAGE = "sagetrain.apiKey";
const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const COLORS = ["#2f6fdf", "#d64545", "#1f9d55", "#c98a0b", "#7c4dcc", "#0f8b8d"];
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  jobId: null,
  metrics: [],          // every row fetched so far for the selected job, oldest first
  finalFetchDone: false,
  timer: null,
  refreshing: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function notice(message) {
  $("notice").textContent = message || "";
  $("notice").hidden = !message;
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.key}` } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();
const SHORT_TIME = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" };
const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString(undefined, SHORT_TIME) : "");
const fmt = (v) => (typeof v !== "number" ? String(v)
  : Math.abs(v) !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5) ? v.toExponential(2)
  : String(Number(v.toPrecision(4))));

// --- jobs table --------------------------------------------------------------------------

function progressCell(job) {
  const { step, total_steps: total } = job.progress;
  const share = total ? Math.min(1, step / total) : 0;
  const bar = el("span", { class: "bar" }, el("span", { style: `width:${(share * 100).toFixed(1)}%` }));
  return el("td", {}, bar, total ? `${step} / ${total}` : String(step));
}

function renderJobs(jobs) {
  const body = $("jobs").tBodies[0];
  body.replaceChildren(...jobs.map((job) => {
    const row = el("tr", { "data-job-id": job.id, "data-status": job.status },
      el("td", {}, el("div", { class: "mono" }, job.id),
        el("div", { class: "muted small" }, when(job.created_at))),
      el("td", { class: "model", title: job.fine_tuned_model || job.model },
        job.fine_tuned_model || job.model),
      el("td", { class: `status status-${job.status}` }, job.status),
      progressCell(job));
    if (job.id === state.jobId) row.classList.add("selected");
    row.addEventListener("click", () => selectJob(job.id));
    return row;
  }));
  $("jobs-empty").hidden = jobs.length > 0;
}

// --- charts ------------------------------------------------------------------------------

// Draws line series ({name, points: [[x, y], ...]}) into an <svg>, and records the number of
// points drawn in its data-points attribute.
function drawChart(target, series) {
  const width = 300, height = 170, left = 46, right = 8, top = 8, bottom = 22;
  target.setAttribute("viewBox", `0 0 ${width} ${height}`);
  target.replaceChildren();
  const all = series.flatMap((s) => s.points);
  target.dataset.points = String(all.length);
  if (all.length === 0) {
    target.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no data yet"));
    return;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
  const sx = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
  const sy = (y) => top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom);

  for (const frac of [0, 0.5, 1]) {
    const y = y0 + frac * (y1 - y0);
    target.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: sy(y), y2: sy(y) }));
    target.append(svg("text", { x: left - 4, y: sy(y) + 3, "text-anchor": "end" }, fmt(y)));
  }
  target.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }));
  target.append(svg("line", { class: "axis", x1: left, x2: width - right,
    y1: height - bottom, y2: height - bottom }));
  target.append(svg("text", { x: left, y: height - 6, "text-anchor": "start" }, `step ${fmt(x0)}`));
  target.append(svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, fmt(x1)));

  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const coords = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    target.append(svg("polyline", { points: coords, stroke: color, "data-series": s.name }));
    if (s.points.length === 1) {
      const [x, y] = s.points[0];
      target.append(svg("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: color }));
    }
    if (series.length > 1) {
      target.append(svg("text", { x: width - right, y: top + 10 + i * 11, "text-anchor": "end",
        style: `fill:${color}` }, s.name.replace(/^valid_/, "")));
    }
  });
}

function seriesOf(rows, name) {
  return { name, points: rows.filter((r) => typeof r[name] === "number").map((r) => [r.step, r[name]]) };
}

function renderCharts() {
  const rows = state.metrics;
  drawChart($("chart-loss"), [seriesOf(rows, "train_loss")]);
  drawChart($("chart-lr"), [seriesOf(rows, "learning_rate")]);
  const validNames = [...new Set(rows.flatMap((r) => Object.keys(r)))]
    .filter((name) => name.startsWith("valid_")).sort();
  drawChart($("chart-valid"), validNames.map((name) => seriesOf(rows, name)));
}

// --- detail pane -------------------------------------------------------------------------

function renderFacts(job) {
  $("detail-title").textContent = job.id;
  const facts = [
    ["Status", job.status], ["Model", job.model], ["Task", job.task],
    ["Fine-tuned model", job.fine_tuned_model || "—"],
    ["Progress", `step ${job.progress.step} of ${job.progress.total_steps ?? "?"}, epoch ${fmt(job.progress.epoch)}`],
    ["Optimizer", job.hyperparameters.optimizer ?? ""],
    ["Created", when(job.created_at)], ["Finished", when(job.finished_at) || "—"],
  ];
  if (job.error) facts.push(["Error", `${job.error.code}: ${job.error.message}`]);
  $("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
}

function renderEvents(events) {
  $("events").replaceChildren(...events.map((e) =>
    el("li", { class: `level-${e.level}` }, el("time", {}, when(e.created_at)), e.message)));
}

function renderCheckpoints(checkpoints) {
  $("checkpoints").tBodies[0].replaceChildren(...checkpoints.map((c) => {
    const metrics = Object.entries(c.metrics).filter(([k]) => k !== "step")
      .map(([k, v]) => `${k}=${fmt(v)}`).join(" ");
    const button = el("button", { type: "button", "data-checkpoint-id": c.id }, "Download");
    button.addEventListener("click", () => download(c, button));
    return el("tr", {}, el("td", {}, String(c.step_number)), el("td", { class: "mono" }, metrics),
      el("td", {}, when(c.created_at)), el("td", {}, button));
  }));
  $("checkpoints-empty").hidden = checkpoints.length > 0;
}

// A plain link cannot carry the Authorization header: fetch the archive, then save the blob.
async function download(checkpoint, button) {
  button.disabled = true;
  button.textContent = "Downloading…";
  try {
    const response = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(checkpoint.fine_tuning_job_id)}` +
      `/checkpoints/${encodeURIComponent(checkpoint.id)}/content`);
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: `${checkpoint.fine_tuned_model_checkpoint.replace(/[^\w.-]+/g, "_")}.tar.gz` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (error) {
    notice(`Download failed: ${error.message}`);
  } finally {
    button.disabled = false;
    button.textContent = "Download";
  }
}

// Rows come ordered by step; re-reading from the last step seen catches a validation row
// written at that step after the previous poll, and the rows already held are skipped.
async function fetchNewMetrics(jobId) {
  const last = state.metrics.length ? state.metrics[state.metrics.length - 1].step : 0;
  const held = state.metrics.filter((r) => r.step === last).length;
  const page = await getJson(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/metrics?from_step=${last}`);
  if (jobId !== state.jobId) return;
  const fresh = page.data.filter((r) => r.step > last);
  const atLast = page.data.filter((r) => r.step === last).slice(held);
  state.metrics.push(...atLast, ...fresh);
}

// One refresh at a time, so two overlapping ones never append the same rows twice.
function refreshDetail() {
  state.refreshing = state.refreshing || loadDetail().finally(() => { state.refreshing = null; });
  return state.refreshing;
}

async function loadDetail() {
  const jobId = state.jobId;
  if (!jobId || state.finalFetchDone) return;
  const base = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  const job = await getJson(base);
  await fetchNewMetrics(jobId);
  const [events, checkpoints] = await Promise.all([
    getJson(`${base}/events?limit=100`), getJson(`${base}/checkpoints?limit=100`)]);
  if (jobId !== state.jobId) return;
  renderFacts(job);
  renderCharts();
  renderEvents(events.data);
  renderCheckpoints(checkpoints.data);
  // once a job has ended and everything it wrote has been read, nothing more will come
  state.finalFetchDone = ENDED.has(job.status);
}

function selectJob(jobId) {
  if (state.jobId !== jobId) {
    state.jobId = jobId;
    state.metrics = [];
    state.finalFetchDone = false;
    history.replaceState(null, "", `#${jobId}`);
  }
  $("detail").hidden = false;
  for (const row of $("jobs").tBodies[0].rows) row.classList.toggle("selected", row.dataset.jobId === jobId);
  refreshDetail().catch((error) => notice(error.message));
}

// --- polling -----------------------------------------------------------------------------

async function poll() {
  if (!state.key) {
    notice("Enter an API key to see your jobs.");
    return;
  }
  try {
    const jobs = await getJson("/v1/fine_tuning/jobs?limit=100");
    renderJobs(jobs.data);
    await refreshDetail();
    notice("");
  } catch (error) {
    notice(error.status === 401 ? "This API key was not accepted." : `Could not load: ${error.message}`);
  }
}

async function pollLoop() {
  clearTimeout(state.timer);
  await poll();
  state.timer = setTimeout(pollLoop, POLL_MS);
}

function init() {
  $("key-input").value = state.key;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key-input").value.trim();
    localStorage.setItem(KEY_STORAGE, state.key);
    pollLoop();
  });
  $("key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    state.key = "";
    $("key-input").value = "";
    $("jobs").tBodies[0].replaceChildren();
    $("detail").hidden = true;
    state.jobId = null;
    pollLoop();
  });
  const fromHash = decodeURIComponent(location.hash.slice(1));
  if (fromHash) selectJob(fromHash);
  pollLoop();
}

init();
