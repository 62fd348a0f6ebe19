// The upload form (POST /v1/files, showing the validation it answers) and the create-job
// form (POST /v1/fine_tuning/jobs). Choices (tasks, optimizers, strategies) and field help
// come from the OpenAPI document, so the page names what the server accepts.

import { $, api, el, fmt, getJson, postJson } from "./api.js";

// Hyperparameters that mean something to some tasks only (TASK_SPECIFIC in
// sage_core/schemas.py): their fields show for those tasks alone.
const TASK_FIELDS = {
  chat: ["lora", "train_on_inputs"],
  completion: ["lora", "train_on_inputs"],
  seq2seq: ["architecture", "num_beams"],
  "image-classification": ["augment"],
};

const schema = { tasks: [], optimizers: [], strategies: [], help: {} };
let files = [];

function enumOf(property) {
  const variants = property.anyOf || [property];
  return variants.flatMap((v) => v.enum || []);
}

export async function loadSchema() {
  const doc = await (await fetch("/openapi.json")).json();
  const parts = doc.components.schemas;
  schema.tasks = enumOf(parts.JobCreate.properties.task);
  schema.optimizers = enumOf(parts.Hyperparameters.properties.optimizer);
  schema.strategies = enumOf(parts.Resources.properties.strategy);
  for (const [name, prop] of Object.entries(parts.Hyperparameters.properties)) {
    schema.help[name] = prop.description || "";
  }
  fillSelect($("upload-task"), [["", "recognise from the rows"], ...schema.tasks.map((t) => [t, t])]);
  fillSelect($("job-task"), [["", "the training file's task"], ...schema.tasks.map((t) => [t, t])]);
  fillSelect($("hp-optimizer"), schema.optimizers.map((o) => [o, o]));
  fillSelect($("res-strategy"), schema.strategies.map((s) => [s, s]));
  $("compare-to").replaceChildren(...schema.optimizers.map((o) => el("label", { class: "check" },
    el("input", { type: "checkbox", name: "compare_to", value: o }), ` ${o}`)));
  for (const input of document.querySelectorAll("#job-form [data-hp]")) {
    input.title = schema.help[input.dataset.hp] || "";
  }
  syncTaskFields();
}

function fillSelect(select, options) {
  const chosen = select.value;
  select.replaceChildren(...options.map(([value, text]) => el("option", { value }, text)));
  if (options.some(([value]) => value === chosen)) select.value = chosen;
}

export async function loadModels() {
  const models = (await getJson("/v1/models")).data;
  fillSelect($("job-model"), models.map((m) => [m.id, m.id]));
}

export async function loadFiles() {
  files = (await getJson("/v1/files?limit=1000")).data;
  const label = (f) => `${f.filename} (${f.stats?.task ?? "?"}, ${f.id})`;
  fillSelect($("job-training-file"), [["", "choose a file"], ...files.map((f) => [f.id, label(f)])]);
  fillSelect($("job-validation-file"), [["", "none"], ...files.map((f) => [f.id, label(f)])]);
  syncTaskFields();
  return files;
}

export const fileById = (id) => files.find((f) => f.id === id);

// The task the job will train: the one chosen, else the training file's.
function currentTask() {
  return $("job-task").value || fileById($("job-training-file").value)?.stats?.task || "text-classification";
}

function syncTaskFields() {
  const task = currentTask();
  const shown = new Set(TASK_FIELDS[task] || []);
  for (const field of document.querySelectorAll("#job-form [data-task-field]")) {
    field.hidden = !shown.has(field.dataset.taskField);
  }
  $("job-task-note").textContent = `Trains: ${task}`;
}

// --- upload ------------------------------------------------------------------------------

function statsList(stats) {
  const rows = Object.entries(stats || {}).map(([name, value]) => [name,
    typeof value === "object" && value !== null ? JSON.stringify(value) : fmt(value)]);
  return el("dl", { class: "facts" }, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function submitUpload(event) {
  event.preventDefault();
  const result = $("upload-result");
  const file = $("upload-file").files[0];
  if (!file) {
    result.replaceChildren(el("p", { class: "bad" }, "Choose a file first."));
    return;
  }
  const form = new FormData();
  form.append("file", file);
  form.append("purpose", "fine-tune");
  if ($("upload-task").value) form.append("task", $("upload-task").value);
  $("upload-submit").disabled = true;
  result.replaceChildren(el("p", { class: "muted" }, `Uploading ${file.name}…`));
  try {
    const uploaded = await (await api("/v1/files", { method: "POST", form })).json();
    result.replaceChildren(
      el("p", { class: "good", "data-file-id": uploaded.id },
        `Valid: ${uploaded.filename} is ${uploaded.id} (${uploaded.status}, ${uploaded.bytes} bytes)`),
      statsList(uploaded.stats));
    await loadFiles();
    if (!$("job-training-file").value) $("job-training-file").value = uploaded.id;
    syncTaskFields();
  } catch (error) {
    result.replaceChildren(el("p", { class: "bad", role: "alert" }, `Rejected: ${error.message}`));
  } finally {
    $("upload-submit").disabled = false;
  }
}

// --- create a job ------------------------------------------------------------------------

const numbers = (text, parse) => text.split(/[\s,]+/).filter(Boolean).map(parse);

function setNumber(target, name, id, parse = Number) {
  const value = $(id).value.trim();
  if (value !== "") target[name] = parse(value);
}

// The request body from the form: only what the user filled in, so the server's defaults
// ("auto") apply to the rest.
export function jobBody() {
  const task = currentTask();
  const shown = new Set(TASK_FIELDS[task] || []);
  const hp = { optimizer: $("hp-optimizer").value };
  setNumber(hp, "n_epochs", "hp-epochs", parseInt);
  setNumber(hp, "batch_size", "hp-batch-size", parseInt);
  setNumber(hp, "learning_rate", "hp-learning-rate", parseFloat);
  setNumber(hp, "max_seq_length", "hp-max-seq-length", parseInt);
  setNumber(hp, "warmup_ratio", "hp-warmup", parseFloat);
  setNumber(hp, "weight_decay", "hp-weight-decay", parseFloat);
  setNumber(hp, "beta3", "hp-beta3", parseFloat);
  setNumber(hp, "eval_every_steps", "hp-eval-every", parseInt);
  setNumber(hp, "checkpoint_every_steps", "hp-checkpoint-every", parseInt);
  if (shown.has("lora") && $("hp-lora").checked) {
    hp.lora = { r: parseInt($("hp-lora-r").value, 10) || 8 };
  }
  if (shown.has("train_on_inputs") && $("hp-train-on-inputs").checked) hp.train_on_inputs = true;
  if (shown.has("num_beams")) setNumber(hp, "num_beams", "hp-num-beams", parseInt);
  if (shown.has("architecture") && $("hp-architecture").value !== "auto") {
    hp.architecture = $("hp-architecture").value;
  }
  if (shown.has("augment") && !$("hp-augment").checked) hp.augment = false;

  const body = { model: $("job-model").value, training_file: $("job-training-file").value,
    hyperparameters: hp };
  if ($("job-validation-file").value) body.validation_file = $("job-validation-file").value;
  if ($("job-task").value) body.task = $("job-task").value;
  if ($("job-suffix").value.trim()) body.suffix = $("job-suffix").value.trim();
  setNumber(body, "seed", "job-seed", parseInt);
  const rates = numbers($("sweep-rates").value, parseFloat);
  const seeds = numbers($("sweep-seeds").value, (s) => parseInt(s, 10));
  if (rates.length || seeds.length) {
    body.sweep = {};
    if (rates.length) body.sweep.learning_rate = rates;
    if (seeds.length) body.sweep.seeds = seeds;
  }
  const compare = [...document.querySelectorAll("#compare-to input:checked")].map((c) => c.value);
  if (compare.length) body.compare_to = compare;
  const gpus = parseInt($("res-gpus").value, 10);
  if (gpus > 1 || $("res-strategy").value !== "auto") {
    body.resources = { gpus: gpus || 1, strategy: $("res-strategy").value };
  }
  return body;
}

async function submitJob(event, onCreated) {
  event.preventDefault();
  const result = $("job-form-result");
  $("job-submit").disabled = true;
  try {
    const job = await postJson("/v1/fine_tuning/jobs", jobBody());
    result.replaceChildren(el("p", { class: "good", "data-job-id": job.id },
      `Created ${job.id} (${job.status})${job.sweep ? `, a sweep of ${job.sweep.runs.length} runs` : ""}.`));
    onCreated(job);
  } catch (error) {
    const where = error.error?.param ? ` (${error.error.param})` : "";
    result.replaceChildren(el("p", { class: "bad", role: "alert" }, `Not created${where}: ${error.message}`));
  } finally {
    $("job-submit").disabled = false;
  }
}

export function initForms(onCreated) {
  $("upload-form").addEventListener("submit", submitUpload);
  $("job-form").addEventListener("submit", (event) => submitJob(event, onCreated));
  $("job-task").addEventListener("change", syncTaskFields);
  $("job-training-file").addEventListener("change", syncTaskFields);
}
