// Charts drawn with Chart.js 4 (its UMD build, vendored by `make setup` and served as
// /dashboard/chart.umd.js; `window.Chart`). Each chart records the points it holds in its
// canvas's data-points attribute.

const PALETTE = ["#2f6fdf", "#d64545", "#1f9d55", "#c98a0b", "#7c4dcc", "#0f8b8d",
  "#e0669b", "#6b7280", "#8a5a00", "#3a9ad9"];
// logged beside the metrics, not a measure of the model
const NOT_METRICS = new Set(["step", "epoch", "learning_rate", "grad_norm", "samples_per_second",
  "eval_seconds", "train_loss", "valid_loss"]);

export const chartsAvailable = () => typeof window.Chart === "function";
export const colorOf = (i) => PALETTE[i % PALETTE.length];

function axis(title, extra = {}) {
  return { title: { display: true, text: title, font: { weight: "600" } },
    ticks: { maxTicksLimit: 8 }, ...extra };
}

const stepAxis = () => axis("step", { type: "linear", ticks: { maxTicksLimit: 11, precision: 0 } });

function lineOptions(scales, legendPosition = "top") {
  return {
    animation: false,
    responsive: true,
    maintainAspectRatio: false,
    parsing: false,
    normalized: true,
    interaction: { mode: "nearest", axis: "x", intersect: false },
    plugins: {
      // a legend beside the plot area, never over the lines
      legend: { position: legendPosition,
        labels: { usePointStyle: true, boxHeight: 7, pointStyleWidth: 16 } },
      tooltip: { callbacks: { title: (items) => (items.length ? `step ${items[0].parsed.x}` : "") } },
    },
    scales,
  };
}

function record(chart) {
  const points = chart.data.datasets.reduce((n, d) => n + d.data.length, 0);
  chart.canvas.dataset.points = String(points);
}

function series(rows, name) {
  return rows.filter((r) => typeof r[name] === "number").map((r) => ({ x: r.step, y: r[name] }));
}

export const validationMetrics = (rows) => [...new Set(rows.flatMap((r) => Object.keys(r)))]
  .filter((name) => name.startsWith("valid_") && !NOT_METRICS.has(name)).sort();

// Evaluations are few: each one is a marked point. Training rows are many: a plain line,
// marked only while there are few.
function dataset(label, data, { color, yAxisID, evaluation, dash }) {
  return { label, data, yAxisID, borderColor: color, backgroundColor: color, borderWidth: 1.8,
    borderDash: dash, pointHoverRadius: 5,
    pointStyle: "circle", pointRadius: evaluation ? 3.5 : data.length < 30 ? 2 : 0, tension: 0 };
}

// Loss (left axis) and the validation metrics (right axis: 0-1 when every value is,
// as accuracy, F1 and MCC are) of one job.
export function createTrainingChart(canvas) {
  return new window.Chart(canvas, { type: "line", data: { datasets: [] }, options: lineOptions({
    x: stepAxis(),
    y: axis("loss (cross-entropy)", { position: "left" }),
    metric: axis("metric (0–1)", { position: "right", grid: { drawOnChartArea: false } }),
  }) });
}

// `lastStep`: the job's total steps, so the axis keeps its length while the job runs.
export function updateTrainingChart(chart, rows, lossTitle, lastStep) {
  const metrics = validationMetrics(rows);
  const datasets = [
    dataset("train loss", series(rows, "train_loss"), { color: colorOf(0), yAxisID: "y" }),
    dataset("validation loss", series(rows, "valid_loss"),
      { color: colorOf(1), yAxisID: "y", evaluation: true, dash: [6, 3] }),
    ...metrics.map((name, i) => dataset(name.replace(/^valid_/, "validation "), series(rows, name),
      { color: colorOf(i + 2), yAxisID: "metric", evaluation: true })),
  ].filter((d) => d.data.length > 0);
  const values = datasets.filter((d) => d.yAxisID === "metric").flatMap((d) => d.data.map((p) => p.y));
  const unit = values.length > 0 && values.every((v) => v >= -1 && v <= 1);
  const scales = chart.options.scales;
  scales.y.title.text = lossTitle;
  scales.x.suggestedMax = lastStep ?? undefined;
  scales.metric.display = values.length > 0;
  scales.metric.title.text = unit ? "metric (0–1)" : "metric";
  scales.metric.suggestedMin = unit ? Math.min(0, ...values) : undefined;
  scales.metric.suggestedMax = unit ? 1 : undefined;
  chart.data.datasets = datasets;
  chart.update("none");
  record(chart);
}

export function createRateChart(canvas) {
  return new window.Chart(canvas, { type: "line", data: { datasets: [] }, options: lineOptions({
    x: stepAxis(),
    y: axis("learning rate", { ticks: { maxTicksLimit: 8, callback: (v) => (v === 0 ? "0" : Number(v).toExponential(1)) } }),
  }) });
}

export function updateRateChart(chart, rows, lastStep) {
  chart.options.scales.x.suggestedMax = lastStep ?? undefined;
  chart.data.datasets = [dataset("learning rate", series(rows, "learning_rate"),
    { color: colorOf(4), yAxisID: "y" })].filter((d) => d.data.length > 0);
  chart.update("none");
  record(chart);
}

// A sweep's runs overlaid: one line per child, `name` from each child's rows.
export function createOverlayChart(canvas, yTitle) {
  return new window.Chart(canvas, { type: "line", data: { datasets: [] }, options: lineOptions({
    x: stepAxis(), y: axis(yTitle),
  }) });
}

export function updateOverlayChart(chart, runs, name, { evaluation = false } = {}) {
  chart.data.datasets = runs.map((run, i) => dataset(run.label, series(run.rows, name),
    { color: colorOf(i), yAxisID: "y", evaluation, dash: run.dash }))
    .filter((d) => d.data.length > 0);
  chart.update("none");
  record(chart);
}

// The sensitivity report: the log10(I) histogram, and each block's mean I on a log axis.
export function drawSensitivity(histCanvas, blocksCanvas, report) {
  const hist = report.overall.histogram_log10 || { edges: [], counts: [] };
  const centers = hist.counts.map((_, i) => (hist.edges[i] + hist.edges[i + 1]) / 2);
  const histChart = new window.Chart(histCanvas, { type: "bar", data: {
    labels: centers.map((c) => c.toFixed(2)),
    datasets: [{ label: "parameters", data: hist.counts, backgroundColor: colorOf(0) }],
  }, options: { animation: false, responsive: true, maintainAspectRatio: false,
    plugins: { legend: { display: false },
      tooltip: { callbacks: { title: (items) => `log10 I ≈ ${items[0].label}` } } },
    scales: { x: axis("log10 I (sensitivity |θ·∂L/∂θ|)"), y: axis("parameters (count)") } } });
  const source = Object.keys(report.blocks || {}).length ? report.blocks : report.modules || {};
  const names = Object.keys(source).filter((n) => typeof source[n].mean === "number" && source[n].mean > 0);
  const blocksChart = new window.Chart(blocksCanvas, { type: "bar", data: {
    labels: names.map((n) => n.split(".").slice(-2).join(".")),
    datasets: [{ label: "mean I", data: names.map((n) => source[n].mean), backgroundColor: colorOf(2) }],
  }, options: { animation: false, responsive: true, maintainAspectRatio: false,
    plugins: { legend: { display: false },
      tooltip: { callbacks: { title: (items) => names[items[0].dataIndex],
        label: (item) => `mean I = ${Number(item.raw).toExponential(2)}` } } },
    scales: { x: axis(Object.keys(report.blocks || {}).length ? "block" : "module"),
      y: axis("mean I (log scale)", { type: "logarithmic",
        ticks: { maxTicksLimit: 6, callback: (v) => Number(v).toExponential(1) } }) } } });
  record(histChart);
  blocksCanvas.dataset.points = String(names.length);
  return [histChart, blocksChart];
}
