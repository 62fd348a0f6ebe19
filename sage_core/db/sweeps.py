"""Sweeps: a parent job and its children, one ordinary job per (optimizer, learning rate,
seed).

The parent is never queued, dispatched or claimed: it is `running` from its creation until
its children are all final, and is then settled from them, in the transaction of the
status change that ended the last child (`transitions.transition` calls `settle`):
- `succeeded` if at least one child succeeded; its fine_tuned_model is then the best
  child's (the highest final valid_f1_macro for classification, the lowest valid_loss for
  regression, read from the child's last evaluation row), and `sweep.best_job_id` names it;
- `failed` if none succeeded, with an error naming each child and how it ended;
- `cancelled` if it was cancelled (which cancels every unfinished child).

Concurrent settling: every terminal transition of a child first locks its parent's row
(`lock_parent`, SELECT ... FOR UPDATE on PostgreSQL; SQLite has one writer at a time), so
two children ending at once are serialised, and the second reads the first's committed
status; settling itself is a conditional UPDATE (parent still running), so a parent is
settled once. Locking the parent before the child's own UPDATE keeps one lock order
(parent, then child), the same as cancelling a parent takes, so the two cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from sage_core.db.events import add_event
from sage_core.db.models import Checkpoint, Job, JobMetric, JobStatus, utcnow
from sage_core.db.webhooks import enqueue_job_ended
from sage_core.names import main_metric

S = JobStatus
SWEEP_FAILED = "sweep_failed"


@dataclass(frozen=True)
class ChildResult:
    id: str
    optimizer: str
    learning_rate: float
    status: str
    fine_tuned_model: str | None
    metrics: dict[str, Any]  # the last evaluation's valid_* values; {} before one
    score: float | None  # metrics[main metric], if logged
    seed: int | None = None
    warnings: tuple[str, ...] = ()  # the codes of the child's own warnings


def lock_parent(session: Session, job_id: str) -> str | None:
    """The job's parent id, its row locked for this transaction; None for a job with none."""
    parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
    if parent_id is not None:
        session.execute(select(Job.id).where(Job.id == parent_id).with_for_update())
    return parent_id


def unfinished_children(session: Session, parent_id: str) -> list[str]:
    return list(session.scalars(select(Job.id).where(
        Job.parent_id == parent_id, Job.status.not_in(list(S.FINAL))).order_by(Job.id)))


def _last_metrics(session: Session, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each job's last evaluation row (highest step, latest written), valid_* only; the
    latest checkpoint's metrics for a job with no evaluation row."""
    if not job_ids:
        return {}
    out: dict[str, dict[str, Any]] = {}
    rows = session.execute(
        select(JobMetric.job_id, JobMetric.data).where(
            JobMetric.job_id.in_(list(job_ids)), JobMetric.kind == "eval")
        .order_by(JobMetric.job_id, JobMetric.step, JobMetric.id)).all()
    for job_id, data in rows:  # ascending: the last one wins
        out[job_id] = {k: v for k, v in (data or {}).items() if k.startswith("valid_")}
    missing = [j for j in job_ids if j not in out]
    if missing:
        checkpoints = session.execute(
            select(Checkpoint.job_id, Checkpoint.metrics).where(Checkpoint.job_id.in_(missing))
            .order_by(Checkpoint.job_id, Checkpoint.step)).all()
        for job_id, metrics in checkpoints:
            valid = {k: v for k, v in (metrics or {}).items() if k.startswith("valid_")}
            if valid:
                out[job_id] = valid
    return out


def children(session: Session, parent: Job) -> list[ChildResult]:
    """The parent's children in grid order, each with its last validation metrics."""
    metric, _ = main_metric(parent.task)
    # populate_existing: transitions UPDATE without synchronising loaded objects
    rows = {j.id: j for j in session.scalars(
        select(Job).where(Job.parent_id == parent.id)
        .execution_options(populate_existing=True))}
    order = [run["job_id"] for run in (parent.sweep or {}).get("runs", [])]
    order += sorted(set(rows) - set(order))
    jobs = [rows[i] for i in order if i in rows]
    metrics = _last_metrics(session, [j.id for j in jobs])
    out = []
    for job in jobs:
        hp = (job.spec or {}).get("hyperparameters", {})
        found = metrics.get(job.id, {})
        score = found.get(metric)
        out.append(ChildResult(
            id=job.id, optimizer=str(hp.get("optimizer")),
            learning_rate=float(hp.get("learning_rate") or 0.0), status=job.status,
            fine_tuned_model=job.fine_tuned_model, metrics=found,
            score=float(score) if isinstance(score, int | float) else None, seed=job.seed,
            warnings=tuple(str(w.get("code")) for w in job.warnings or []
                           if isinstance(w, dict))))
    return out


def best_of(results: Iterable[ChildResult], *, greater_is_better: bool) -> ChildResult | None:
    """The succeeded child with the best score; ties go to the earlier one in the grid. A
    succeeded child without the metric ranks after every one with it."""
    best: ChildResult | None = None
    for child in results:
        if child.status != S.SUCCEEDED:
            continue
        if best is None or (child.score is not None and (best.score is None or (
                child.score > best.score if greater_is_better else child.score < best.score))):
            best = child
    return best


def settle(session: Session, parent_id: str) -> str | None:
    """End the parent if all its children are final. Returns the status it moved to, or
    None (children still unfinished, or the parent already final). The caller holds the
    parent's lock (`lock_parent`) and commits."""
    parent = session.get(Job, parent_id, populate_existing=True)
    if parent is None or parent.status in S.FINAL or parent.sweep is None:
        return None
    results = children(session, parent)
    if not results or any(c.status not in S.FINAL for c in results):
        return None
    metric, greater = main_metric(parent.task)
    best = best_of(results, greater_is_better=greater)
    now = utcnow()
    values: dict[str, Any] = {"finished_at": now, "estimated_finish": None}
    if best is not None:
        status = S.SUCCEEDED
        values.update(fine_tuned_model=best.fine_tuned_model,
                      sweep={**parent.sweep, "best_job_id": best.id})
        shown = "n/a" if best.score is None else f"{best.score:.4g}"
        message = (f"Sweep finished: best child {best.id} ({best.optimizer}, learning rate "
                   f"{best.learning_rate:g}, {metric}={shown}); its model is the sweep's")
    else:
        status = S.FAILED
        ended = ", ".join(f"{c.id} {c.status}" for c in results)
        values["error"] = {"code": SWEEP_FAILED, "param": None,
                           "message": f"no child job of the sweep succeeded: {ended}"}
        message = f"Sweep failed: {values['error']['message']}"
    stmt = (update(Job).where(Job.id == parent_id, Job.status == S.RUNNING)
            .values(status=status, **values).execution_options(synchronize_session=False))
    result = session.execute(stmt)
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        return None
    add_event(session, parent_id, message, level="info" if best is not None else "error")
    enqueue_job_ended(session, parent_id)
    return status
