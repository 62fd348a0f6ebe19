"""A job's sensitivity report (jobs.sensitivity, written by the worker when the job
succeeds), as JSON or as a PNG plot.

matplotlib is imported inside `render_png` only, so importing the API stays light; it
needs no torch. The plot is drawn on a Figure with the Agg canvas, never through pyplot's
global state, so concurrent requests in worker threads do not share a figure.
"""

from __future__ import annotations

import io
import os
from typing import Any

from sage_core.db.models import Job, JobStatus
from sage_core.errors import SensitivityNotAvailableError

OBJECT = "fine_tuning.job.sensitivity"


def report_of(job: Job) -> dict[str, Any]:
    """The stored report, or SensitivityNotAvailableError (404) saying why there is none."""
    report = job.sensitivity
    if isinstance(report, dict) and report:
        return report
    prefix = f"Fine-tuning job '{job.id}' has no sensitivity report"
    if job.status != JobStatus.SUCCEEDED:
        if job.status in JobStatus.FINAL:
            why = (f"it ended as '{job.status}'; the report is computed only when a job "
                   "succeeds")
        else:
            why = (f"it is '{job.status}'; the report is computed when the job succeeds")
    elif job.validation_file_id is None:
        why = ("it was trained without a validation file, and the report is measured on "
               "validation data")
    else:
        why = "the sensitivity pass produced none (see the job's events)"
    raise SensitivityNotAvailableError(f"{prefix}: {why}.", param="fine_tuning_job_id")


def to_body(job: Job, report: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in report.items() if k not in ("object", "fine_tuning_job_id")}
    return {"object": OBJECT, "fine_tuning_job_id": job.id, **extra}


def _optimizer(job: Job) -> str:
    hyperparameters = (job.spec or {}).get("hyperparameters") or {}
    return str(hyperparameters.get("optimizer") or "?")


def _short_names(names: list[str]) -> tuple[str, list[str]]:
    """The dotted prefix all names share, and the names without it
    ("bert.encoder.layer.3" -> ("bert.encoder.layer.", "3"))."""
    if len(names) < 2:
        return "", names
    cut = os.path.commonprefix(names).rfind(".") + 1
    if any(not n[cut:] for n in names):
        return "", names
    return names[0][:cut], [n[cut:] for n in names]


def render_png(job: Job, report: dict[str, Any]) -> bytes:
    """Left: the overall log10(I) histogram; right: each block's mean I (each module's when
    the model has no repeated blocks). Title: the job id and its optimizer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.3])

    overall = report.get("overall") or {}
    hist = overall.get("histogram_log10") or {}
    edges = [float(e) for e in hist.get("edges") or []]
    counts = [int(c or 0) for c in hist.get("counts") or []]
    if len(edges) == len(counts) + 1 and counts:
        widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
        left.bar(edges[:-1], counts, width=widths, align="edge", color="#4c72b0",
                 edgecolor="white", linewidth=0.5)
    left.set_xlabel("log10(I),  I = |θ · ∂L/∂θ|")
    left.set_ylabel("parameters")
    left.set_title("overall")
    # I = 0 exactly: never reached by the measured batches (e.g. embeddings of tokens
    # that never occur), counted apart from the low-sensitivity fractions
    notes = [f"{name}: {overall.get(key, 0) or 0:,}" for name, key in (
        ("I = 0 (never reached)", "zero_count"), ("non-finite", "nonfinite_count"))]
    below = overall.get("fraction_below") or {}
    if below.get("1e-08") is not None:
        notes.append(f"I < 1e-8 (of I > 0): {below['1e-08']:.1%}")
    notes += [f"< 1e-12: {hist.get('underflow', 0) or 0:,}",
              f">= 1: {hist.get('overflow', 0) or 0:,}"]
    left.text(0.02, 0.97, "\n".join(notes), transform=left.transAxes, va="top", fontsize=8)

    groups = report.get("blocks") or {}
    kind = "block"
    if not groups:
        groups, kind = report.get("modules") or {}, "module"
    names = list(groups)
    means = [float((groups[n] or {}).get("mean") or 0.0) for n in names]
    if names:
        right.bar(range(len(names)), means, color="#dd8452")
        prefix, labels = _short_names(names)
        right.set_xticks(range(len(names)), labels, rotation=90 if prefix == "" else 0,
                         fontsize=7 if len(names) <= 40 else 5)
        if prefix:
            right.set_xlabel(f"{prefix}<i>")
        if any(m > 0 for m in means):
            right.set_yscale("log")
    else:
        right.text(0.5, 0.5, "no parameters", ha="center", va="center",
                   transform=right.transAxes)
    right.set_ylabel("mean I")
    right.set_title(f"mean sensitivity per {kind}")

    fig.suptitle(f"{job.id}: parameter sensitivity (optimizer: {_optimizer(job)})")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
