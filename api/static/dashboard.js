// The sagetrain dashboard: the caller's jobs, forms to upload a file and create a job, and
// one job's (or sweep's) page. Plain browser JavaScript; every call goes to the /v1 API with
// the key the user entered. A running job's metrics and events come live from its
// Server-Sent Events stream (opened with a short-lived stream token, since EventSource
// cannot send the key), else by polling.

import { $, ApiError, ENDED, KEY_STORAGE, api, auth, el, getJson, jobPath, notice, postJson } from "./api.js";
import * as charts from "./charts.js";
import { fileById, initForms, loadFiles, loadModels, loadSchema } from "./forms.js";
import * as views from "./views.js";

const POLL_MS = 2000;
const STREAM_RETRIES = 3;

const state = {
  jobs: [],
  jobId: null,
  job: null,
  metrics: [],          // the selected job's rows, oldest first
  events: new Map(),    // the selected job's events by id
  sweep: null,          // the selected sweep's report
  runs: new Map(),      // a sweep's children: id -> {label, rows, ended}
  stream: null,         // the open EventSource, if any
  streamFailures: 0,
  sensitivityShown: false,
  filesReadFor: null,   // the job for which the files list was last read again
  done: false,          // the selected job has ended and everything it wrote is shown
  timer: null,
  busy: null,
  renderTimer: null,
  charts: {},
};

// --- charts ------------------------------------------------------------------------------

function ensureCharts() {
  if (!charts.chartsAvailable() || state.charts.training) return;
  state.charts.training = charts.createTrainingChart($("chart-training"));
  state.charts.rate = charts.createRateChart($("chart-lr"));
  state.charts.sweepMetric = charts.createOverlayChart($("chart-sweep-metric"), "validation metric");
  state.charts.sweepLoss = charts.createOverlayChart($("chart-sweep-loss"), "train loss");
}

function renderCharts() {
  clearTimeout(state.renderTimer);
  state.renderTimer = null;
  if (!state.job) return;
  const empty = state.metrics.length === 0;
  $("training-charts").hidden = empty;
  $("charts-empty").hidden = !empty;
  $("charts-empty").textContent = ENDED.has(state.job.status)
    ? "This job logged no training rows." : "No rows yet: the curves start with the first training step.";
  if (!state.charts.training) return;
  const lossTitle = state.job.task === "text-regression" ? "loss (mean squared error)" : "loss (cross-entropy)";
  const lastStep = state.job.progress.total_steps;
  charts.updateTrainingChart(state.charts.training, state.metrics, lossTitle, lastStep);
  charts.updateRateChart(state.charts.rate, state.metrics, lastStep);
}

// Live rows come one at a time: draw at most a few times a second.
function scheduleCharts() {
  state.renderTimer = state.renderTimer || setTimeout(renderCharts, 300);
}

function renderSweepCharts() {
  if (!state.charts.sweepMetric || !state.sweep) return;
  const runs = state.sweep.children.map((c) => state.runs.get(c.id)).filter(Boolean);
  state.charts.sweepMetric.options.scales.y.title.text = `${state.sweep.metric} (validation)`;
  charts.updateOverlayChart(state.charts.sweepMetric, runs, state.sweep.metric, { evaluation: true });
  charts.updateOverlayChart(state.charts.sweepLoss, runs, "train_loss");
}

// --- the selected job's rows -------------------------------------------------------------

function addEvents(events) {
  for (const event of events) state.events.set(event.id, event);
  const sorted = [...state.events.values()].sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? 1 : -1));
  views.renderEvents(sorted);
  views.renderSamples(sorted);
}

// Rows come ordered by step; re-reading from the last step seen catches a validation row
// written at that step after the previous read, and the rows already held are skipped.
async function fetchNewMetrics(jobId) {
  const last = state.metrics.length ? state.metrics[state.metrics.length - 1].step : 0;
  const held = state.metrics.filter((r) => r.step === last).length;
  const page = await getJson(jobPath(jobId, `/metrics?from_step=${last}`));
  if (jobId !== state.jobId) return;
  const atLast = page.data.filter((r) => r.step === last).slice(held);
  state.metrics.push(...atLast, ...page.data.filter((r) => r.step > last));
}

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
}

// The stream replays the job's rows from the start, then sends new ones as they come; a
// dropped connection is resumed by EventSource itself (Last-Event-ID). Refused (an expired
// token), it is opened afresh a few times, then the page polls instead.
async function openStream(jobId) {
  if (typeof EventSource !== "function" || state.streamFailures >= STREAM_RETRIES) return;
  let token;
  try {
    token = (await postJson(jobPath(jobId, "/stream_token"))).token;
  } catch (_) {
    state.streamFailures = STREAM_RETRIES;  // an older server: poll
    return;
  }
  if (jobId !== state.jobId || state.stream) return;
  const source = new EventSource(jobPath(jobId, `/stream?token=${encodeURIComponent(token)}`));
  state.stream = source;
  state.metrics = [];
  source.addEventListener("metrics", (message) => {
    if (state.stream !== source) return;
    state.metrics.push(JSON.parse(message.data));
    scheduleCharts();
  });
  source.addEventListener("event", (message) => {
    if (state.stream === source) addEvents([JSON.parse(message.data)]);
  });
  source.addEventListener("end", () => {
    if (state.stream !== source) return;
    closeStream();
    renderCharts();
    refresh();
  });
  source.addEventListener("error", () => {
    if (state.stream === source && source.readyState === EventSource.CLOSED) {
      closeStream();
      state.streamFailures += 1;
    }
  });
  $("live-state").textContent = "live";
}

// --- one job's page ----------------------------------------------------------------------

async function loadSweep(job) {
  state.sweep = await getJson(jobPath(job.id, "/sweep"));
  views.renderSweep(state.sweep);
  const seeds = new Set(state.sweep.children.map((c) => c.seed));
  for (const child of state.sweep.children) {
    const known = state.runs.get(child.id);
    if (known && known.ended) continue;
    const rows = (await getJson(jobPath(child.id, "/metrics"))).data;
    const label = `${child.optimizer} lr ${child.learning_rate.toExponential(1)}` +
      (seeds.size > 1 ? ` seed ${child.seed}` : "");
    state.runs.set(child.id, { label, rows, ended: ENDED.has(child.status) });
  }
  renderSweepCharts();
}

async function loadSensitivity(job) {
  if (state.sensitivityShown || job.status !== "succeeded" || !job.validation_file || job.sweep) return;
  state.sensitivityShown = true;
  try {
    const report = await getJson(jobPath(job.id, "/sensitivity"));
    $("sensitivity-pane").hidden = false;
    views.renderSensitivitySummary(report);
    if (charts.chartsAvailable()) charts.drawSensitivity($("chart-sens-hist"), $("chart-sens-blocks"), report);
  } catch (error) {
    $("sensitivity-pane").hidden = false;
    $("sensitivity-summary").textContent = error.message;
  }
}

async function loadJob() {
  const jobId = state.jobId;
  if (!jobId || state.done) return;
  const job = await getJson(jobPath(jobId));
  if (jobId !== state.jobId) return;
  state.job = job;
  const ended = ENDED.has(job.status);
  if (!fileById(job.training_file) && state.filesReadFor !== jobId) {
    state.filesReadFor = jobId;  // uploaded since the list was read (or deleted): read it once more
    await loadFiles();
  }
  if (job.sweep) {
    await loadSweep(job);
  } else {
    if (!ended && !state.stream) await openStream(jobId);
    if (!state.stream) {
      await fetchNewMetrics(jobId);
      addEvents((await getJson(jobPath(jobId, "/events?limit=100"))).data);
      $("live-state").textContent = ended ? "" : "polling";
    }
  }
  const checkpoints = (await getJson(jobPath(jobId, "/checkpoints?limit=100"))).data;
  if (jobId !== state.jobId) return;
  if (job.sweep) addEvents((await getJson(jobPath(jobId, "/events?limit=100"))).data);
  views.renderJobHead(job);
  views.renderFacts(job, fileById, state.sweep);
  views.renderHyperparameters(job);
  views.renderWarnings(job, state.sweep);
  views.renderCheckpoints(checkpoints, download);
  $("charts-pane").hidden = Boolean(job.sweep);
  $("sweep-pane").hidden = !job.sweep;
  renderCharts();
  await loadSensitivity(job);
  // once a job has ended and everything it wrote has been read, nothing more will come
  state.done = ended && !state.stream;
  if (state.done) $("live-state").textContent = "";
}

function showJob(jobId) {
  if (state.jobId !== jobId) {
    closeStream();
    Object.assign(state, { jobId, job: null, metrics: [], events: new Map(), sweep: null,
      runs: new Map(), streamFailures: 0, sensitivityShown: false, done: false });
    $("sensitivity-pane").hidden = true;
    $("samples-pane").hidden = true;
    $("job-title").textContent = jobId;
    $("job-status").textContent = "";
    $("job-facts").replaceChildren();
    $("action-result").textContent = "";
  }
  if ($("job-page").hidden) window.scrollTo(0, 0);
  $("home").hidden = true;
  $("job-page").hidden = false;
  ensureCharts();
  refresh();
}

function showHome() {
  closeStream();
  state.jobId = null;
  if ($("home").hidden) window.scrollTo(0, 0);
  $("job-page").hidden = true;
  $("home").hidden = false;
  refresh();
}

// A plain link cannot carry the Authorization header: fetch the archive, then save the blob.
async function download(checkpoint, button) {
  button.disabled = true;
  button.textContent = "Downloading…";
  try {
    const response = await api(jobPath(checkpoint.fine_tuning_job_id,
      `/checkpoints/${encodeURIComponent(checkpoint.id)}/content`));
    const blob = await response.blob();
    const name = `${checkpoint.fine_tuned_model_checkpoint.replace(/[^\w.-]+/g, "_")}.tar.gz`;
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    $("download-result").textContent = `Saved ${name} (${(blob.size / 1024).toFixed(0)} KiB).`;
    $("download-result").dataset.bytes = String(blob.size);
  } catch (error) {
    notice(`Download failed: ${error.message}`);
  } finally {
    button.disabled = false;
    button.textContent = "Download";
  }
}

async function act(action) {
  const jobId = state.jobId;
  try {
    const job = await postJson(jobPath(jobId, `/${action}`));
    $("action-result").textContent = `${action}: the job is ${job.status}.`;
    state.done = false;
    if (action === "resume") state.streamFailures = 0;
  } catch (error) {
    $("action-result").textContent = `${action} refused: ${error.message}`;
  }
  refresh();
}

// --- polling -----------------------------------------------------------------------------

async function poll() {
  if (!auth.key) {
    notice("Enter an API key to see your jobs.");
    return;
  }
  try {
    if (state.jobId) {
      await loadJob();
    } else {
      state.jobs = (await getJson("/v1/fine_tuning/jobs?limit=100")).data;
      views.renderJobList(state.jobs, null);
    }
    notice("");
  } catch (error) {
    notice(error instanceof ApiError && error.status === 401
      ? "This API key was not accepted." : `Could not load: ${error.message}`);
  }
}

// One refresh at a time; the next is two seconds after one ends.
function refresh() {
  clearTimeout(state.timer);
  state.busy = state.busy || poll().finally(() => {
    state.busy = null;
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, POLL_MS);
  });
  return state.busy;
}

async function loadChoices() {
  try {
    await Promise.all([loadModels(), loadFiles()]);
  } catch (error) {
    notice(`Could not load models and files: ${error.message}`);
  }
}

function route() {
  const match = /^#job\/(.+)$/.exec(location.hash);
  if (match) showJob(decodeURIComponent(match[1]));
  else showHome();
}

function useKey(key) {
  auth.key = key;
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  if (key) loadChoices();
  refresh();
}

function init() {
  if (!charts.chartsAvailable()) $("vendor-missing").hidden = false;
  $("key-input").value = auth.key;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useKey($("key-input").value.trim());
  });
  $("key-forget").addEventListener("click", () => {
    $("key-input").value = "";
    $("jobs").tBodies[0].replaceChildren();
    useKey("");
  });
  for (const action of ["pause", "resume", "cancel"]) {
    $(`action-${action}`).addEventListener("click", () => act(action));
  }
  initForms((job) => { location.hash = `#job/${encodeURIComponent(job.id)}`; });
  loadSchema().catch((error) => notice(`Could not read the API's schema: ${error.message}`));
  if (auth.key) loadChoices();
  window.addEventListener("hashchange", route);
  route();
}

init();
