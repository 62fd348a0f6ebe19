// Rendering: the jobs table (sweep children grouped under their parent) and the parts of
// one job's page. Functions here only turn API answers into DOM; dashboard.js fetches.

import { $, ENDED, el, fmt, when } from "./api.js";

const jobLink = (id, text = id) => el("a", { href: `#job/${encodeURIComponent(id)}`, class: "mono", title: id }, text);
const rate = (value) => (typeof value === "number" ? value.toExponential(1) : "—");

// --- jobs table --------------------------------------------------------------------------

function runsDone(parent, byParent) {
  const children = byParent.get(parent.id) || [];
  const total = parent.sweep.runs.length;
  const done = children.filter((c) => ENDED.has(c.status)).length;
  return { done, total };
}

function progressCell(job, byParent) {
  let share, text;
  if (job.sweep) {
    const { done, total } = runsDone(job, byParent);
    share = total ? done / total : 0;
    text = `${done}/${total} runs`;
  } else {
    const { step, total_steps: total } = job.progress;
    share = total ? Math.min(1, step / total) : (job.status === "succeeded" ? 1 : 0);
    text = total ? `${step} / ${total}` : (step ? String(step) : "—");
  }
  const bar = el("span", { class: "bar", "aria-hidden": "true" },
    el("span", { style: `width:${(share * 100).toFixed(1)}%` }));
  return el("td", { class: "progress" }, bar, el("span", {}, text));
}

function jobRow(job, byParent, selectedId, child) {
  const hp = job.hyperparameters || {};
  const model = job.fine_tuned_model || job.model;
  const optimizer = job.sweep
    ? [...new Set(job.sweep.runs.map((r) => r.optimizer))].join(" vs ")
    : hp.optimizer;
  const rates = job.sweep ? `${new Set(job.sweep.runs.map((r) => r.learning_rate)).size} rates` : rate(hp.learning_rate);
  const row = el("tr", { "data-job-id": job.id, "data-status": job.status,
    class: [child ? "child" : "", job.sweep ? "parent" : "", job.id === selectedId ? "selected" : ""].join(" ").trim() || null },
    el("td", { class: "job" }, child ? el("span", { class: "tree", "aria-hidden": "true" }, "↳ ") : null,
      jobLink(job.id), el("div", { class: "muted small" }, when(job.created_at))),
    el("td", { class: "model", title: model }, el("span", {}, job.model),
      job.fine_tuned_model ? el("div", { class: "muted small ellipsis" }, job.fine_tuned_model) : null),
    el("td", { class: "task" }, job.task),
    el("td", {}, optimizer || "—"),
    el("td", { class: "num" }, rates),
    el("td", { class: "num seed" }, job.sweep ? "—" : String(job.seed)),
    el("td", { class: `status status-${job.status}` }, job.status),
    progressCell(job, byParent));
  row.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    location.hash = `#job/${encodeURIComponent(job.id)}`;
  });
  return row;
}

// Top-level jobs newest first, each sweep's children under it in grid order.
export function renderJobList(jobs, selectedId) {
  const ids = new Set(jobs.map((j) => j.id));
  const byParent = new Map();
  for (const job of jobs) {
    if (job.parent_job_id && ids.has(job.parent_job_id)) {
      if (!byParent.has(job.parent_job_id)) byParent.set(job.parent_job_id, []);
      byParent.get(job.parent_job_id).push(job);
    }
  }
  const order = (job) => (job.sweep ? job.sweep.runs.map((r) => r.job_id) : []);
  const rows = [];
  for (const job of jobs) {
    if (job.parent_job_id && ids.has(job.parent_job_id)) continue;
    rows.push(jobRow(job, byParent, selectedId, false));
    const grid = order(job);
    const children = (byParent.get(job.id) || []).sort((a, b) => grid.indexOf(a.id) - grid.indexOf(b.id));
    for (const child of children) rows.push(jobRow(child, byParent, selectedId, true));
  }
  $("jobs").tBodies[0].replaceChildren(...rows);
  $("jobs-empty").hidden = jobs.length > 0;
}

// --- one job -----------------------------------------------------------------------------

function factList(target, facts) {
  target.replaceChildren(...facts.filter(Boolean).flatMap(([k, v]) => [el("dt", {}, k),
    el("dd", {}, v instanceof Node ? v : String(v))]));
}

function fileFact(id, file) {
  if (!id) return "none";
  if (!file) return el("span", { class: "mono" }, id);
  const stats = file.stats || {};
  const rows = stats.rows ?? stats.examples;
  return el("span", {}, `${file.filename} `, el("span", { class: "muted mono small" }, id),
    rows !== undefined ? ` — ${rows} rows` : "", stats.task ? `, ${stats.task}` : "");
}

export function renderJobHead(job) {
  $("job-title").textContent = job.sweep ? `Sweep ${job.id}` : `Job ${job.id}`;
  const status = $("job-status");
  status.textContent = job.status;
  status.className = `status status-${job.status}`;
  const ended = ENDED.has(job.status);
  $("action-pause").disabled = ended || job.status === "paused" || Boolean(job.sweep);
  $("action-pause").hidden = Boolean(job.sweep);
  $("action-resume").disabled = job.status !== "paused";
  $("action-resume").hidden = Boolean(job.sweep);
  $("action-cancel").disabled = ended;
}

export function renderFacts(job, fileById, sweepReport) {
  let progress;
  if (job.sweep) {
    const children = sweepReport ? sweepReport.children : [];
    const done = children.filter((c) => ENDED.has(c.status)).length;
    progress = `${done} of ${job.sweep.runs.length} runs finished`;
  } else {
    const { step, total_steps: total, epoch } = job.progress;
    progress = total ? `step ${step} of ${total}, epoch ${fmt(epoch)}`
      : job.status === "queued" ? `queued${job.queue_position ? ` (position ${job.queue_position})` : ""}`
        : `step ${step}`;
  }
  factList($("job-facts"), [
    ["Status", job.status], ["Progress", progress],
    ["Model", el("span", { title: job.model }, job.model)],
    ["Fine-tuned model", job.fine_tuned_model ? el("span", { class: "mono small", title: job.fine_tuned_model }, job.fine_tuned_model) : "—"],
    ["Task", job.task], ["Seed", job.seed],
    ["Training file", fileFact(job.training_file, fileById(job.training_file))],
    ["Validation file", fileFact(job.validation_file, fileById(job.validation_file))],
    ["Resources", `${job.resources.gpus} GPU${job.resources.gpus > 1 ? "s" : ""}, ${job.resources.strategy}`],
    job.parent_job_id ? ["Sweep", jobLink(job.parent_job_id)] : null,
    job.suffix ? ["Suffix", job.suffix] : null,
    ["Created", when(job.created_at)],
    ["Estimated finish", job.estimated_finish && !ENDED.has(job.status) ? when(job.estimated_finish) : null],
    ["Finished", when(job.finished_at) || "—"],
  ].filter((f) => f && f[1] !== null));
}

// A sweep's runs share its hyperparameters but for the optimizer and learning rate, which
// each run's row gives.
export function renderHyperparameters(job) {
  const hp = { ...(job.hyperparameters || {}) };
  if (job.sweep) {
    for (const name of ["optimizer", "learning_rate", "learning_rate_multiplier"]) delete hp[name];
  }
  $("hyperparameters-title").textContent = job.sweep ? "Hyperparameters shared by the runs" : "Hyperparameters";
  const show = (v) => (v === null ? "none" : typeof v === "object" ? JSON.stringify(v) : fmt(v));
  factList($("job-hyperparameters"), Object.keys(hp).sort().map((k) => [k, show(hp[k])]));
}

export function renderWarnings(job, sweepReport) {
  const items = [];
  if (job.error) items.push(el("li", { class: "bad" }, el("strong", {}, `${job.error.code}: `), job.error.message));
  for (const w of job.warnings || []) items.push(el("li", {}, el("strong", {}, `${w.code}: `), w.message));
  for (const w of sweepReport?.warnings || []) {
    items.push(el("li", {}, el("strong", {}, `${w.code}: `), w.message));
  }
  $("job-warnings").replaceChildren(...items);
  $("warnings-pane").hidden = items.length === 0;
}

export function renderEvents(events) {
  $("events").replaceChildren(...events.slice(0, 200).map((e) =>
    el("li", { class: `level-${e.level}` }, el("time", {}, when(e.created_at)), e.message)));
}

// Generated answers (chat, completion, seq2seq) come as events whose data has an answer;
// the latest evaluation's are shown.
export function renderSamples(events) {
  const samples = events.filter((e) => e.data && typeof e.data.answer === "string");
  $("samples-pane").hidden = samples.length === 0;
  if (!samples.length) return;
  const last = Math.max(...samples.map((e) => e.data.step ?? 0));
  const latest = samples.filter((e) => (e.data.step ?? 0) === last).reverse();
  $("samples-step").textContent = `at step ${last}`;
  $("samples").tBodies[0].replaceChildren(...latest.map((e) => el("tr", {},
    el("td", { class: "pre" }, e.data.prompt ?? ""), el("td", { class: "pre" }, e.data.reference ?? ""),
    el("td", { class: "pre" }, e.data.answer))));
}

export function renderCheckpoints(checkpoints, onDownload) {
  $("checkpoints").tBodies[0].replaceChildren(...checkpoints.map((c) => {
    const metrics = Object.entries(c.metrics).filter(([k]) => k !== "step")
      .map(([k, v]) => `${k}=${fmt(v)}`).join(" ");
    const button = el("button", { type: "button", "data-checkpoint-id": c.id }, "Download");
    button.addEventListener("click", () => onDownload(c, button));
    return el("tr", {}, el("td", { class: "num" }, String(c.step_number)),
      el("td", { class: "mono small wrap" }, metrics), el("td", {}, when(c.created_at)), el("td", {}, button));
  }));
  $("checkpoints-empty").hidden = checkpoints.length > 0;
}

// --- a sweep -----------------------------------------------------------------------------

export function renderSweep(report) {
  const verdicts = report.comparisons.map((c) => el("li", {},
    el("strong", {}, `${c.a} (lr ${rate(c.a_learning_rate)}) vs ${c.b} (lr ${rate(c.b_learning_rate)}): `),
    c.verdict, c.low !== null ? ` — 95% interval of ${report.metric} difference [${fmt(c.low)}, ${fmt(c.high)}] over ${c.seeds.length} seeds` : ""));
  if (report.best) {
    verdicts.unshift(el("li", {}, el("strong", {}, "Best run: "), jobLink(report.best.id),
      ` (${report.best.optimizer}, lr ${rate(report.best.learning_rate)}, seed ${report.best.seed ?? "—"}) with ${report.metric} = ${fmt(report.best.score)}`));
  } else if (!ENDED.has(report.status)) {
    verdicts.push(el("li", { class: "muted" }, "No verdict until the runs finish."));
  }
  $("sweep-verdict").replaceChildren(...verdicts);
  $("sweep-metric").textContent = `${report.metric} (${report.greater_is_better ? "higher" : "lower"} is better)`;
  $("sweep-rate-table").tBodies[0].replaceChildren(...report.rates.map((r) => el("tr", { class: r.best ? "best" : null },
    el("td", {}, r.optimizer), el("td", { class: "num" }, rate(r.learning_rate)), el("td", { class: "num" }, String(r.n)),
    el("td", { class: "num" }, fmt(r.mean)), el("td", { class: "num" }, fmt(r.std)), el("td", {}, r.best ? "best" : ""))));
  $("sweep-children").tBodies[0].replaceChildren(...report.children.map((c) => el("tr", { "data-job-id": c.id },
    el("td", {}, jobLink(c.id)), el("td", {}, c.optimizer), el("td", { class: "num" }, rate(c.learning_rate)),
    el("td", { class: "num" }, String(c.seed ?? "—")), el("td", { class: `status status-${c.status}` }, c.status),
    el("td", { class: "num" }, fmt(c.score)), el("td", {}, c.warnings.join(", ")))));
}

export function renderSensitivitySummary(report) {
  const overall = report.overall;
  const below = Object.entries(overall.fraction_below || {})
    .map(([t, f]) => `${(100 * (f ?? 0)).toFixed(1)}% below ${t}`).join(", ");
  $("sensitivity-summary").textContent =
    `${overall.count} parameters; mean I = ${fmt(overall.mean)}; of those with I > 0: ${below}.`;
}
