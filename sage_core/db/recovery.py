"""Getting jobs back from workers that are gone.

A worker that is SIGKILLed, loses its machine or cannot reach the database stops
renewing its job's lease. Whoever notices (the reaper in `sagetrain serve` and in every
Celery worker, or the embedded executor) puts the job back in the queue, to resume from
its last checkpoint, counting the loss in `jobs.lost_leases`. A job that has lost its
worker `max_lost_leases` times fails with `worker_lost` instead: something about it (its
memory use, a crash in a kernel) takes workers down, and another try would too.

Every change is a conditional UPDATE, so any number of reapers may run at once: each
job is moved by exactly one of them. Each function runs in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from sage_core.db.events import add_event
from sage_core.db.models import Job, JobStatus, utcnow
from sage_core.db.sweeps import lock_parent
from sage_core.db.transitions import job_ended

S = JobStatus
WORKER_LOST = "worker_lost"


def release_lost_job(session: Session, job_id: str, *, reason: str, max_lost_leases: int,
                     owner: str | None = None, expired_before: datetime | None = None,
                     now: datetime | None = None) -> str | None:
    """A running job whose worker is gone goes back to `queued`, or to `failed` on its
    `max_lost_leases`-th loss. Only if it is still held by `owner` (when given) and its lease
    expired before `expired_before` (when given). Returns the new status, or None if the job
    was not running under those conditions (someone else moved it first)."""
    now = now or utcnow()
    job = session.get(Job, job_id)
    if job is None:
        return None
    conditions: list[Any] = [Job.id == job_id, Job.status == S.RUNNING,
                             Job.lost_leases == job.lost_leases]
    if owner is not None:
        conditions.append(Job.lease_owner == owner)
    if expired_before is not None:
        conditions.append(Job.lease_expires_at < expired_before)
    lost = job.lost_leases + 1
    if lost < max_lost_leases:
        values: dict[str, Any] = {"status": S.QUEUED, "queued_at": now}
        message = (f"Worker lost ({reason}) at step {job.step}; job queued again to resume "
                   "from its last checkpoint")
    else:
        error = {"code": WORKER_LOST, "param": None, "message": (
            f"the job lost its worker {lost} times (last: {reason}, at step {job.step}); "
            "it may need more memory than a worker has")}
        values = {"status": S.FAILED, "error": error, "finished_at": now,
                  "pause_requested": False}
        message = f"Fine-tuning job failed: {error['message']}"
    # a sweep child that fails may settle its parent (locked first, as transitions do)
    parent_id = lock_parent(session, job_id) if values["status"] == S.FAILED else None
    stmt = (update(Job).where(*conditions)
            .values(lost_leases=lost, estimated_finish=None, **values)
            .execution_options(synchronize_session=False))
    result = session.execute(stmt)
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        return None
    add_event(session, job_id, message, level="warn" if lost < max_lost_leases else "error")
    if values["status"] == S.FAILED:
        job_ended(session, job_id, S.FAILED, parent_id=parent_id)
    return str(values["status"])


def reap_expired_leases(session: Session, *, max_lost_leases: int,
                        now: datetime | None = None) -> dict[str, str]:
    """Release every running job whose lease has expired. Returns {job_id: new status}."""
    now = now or utcnow()
    expired = session.scalars(
        select(Job.id).where(Job.status == S.RUNNING, Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
    ).all()
    moved = {}
    for job_id in expired:
        status = release_lost_job(session, job_id, reason="no heartbeat",
                                  max_lost_leases=max_lost_leases, expired_before=now, now=now)
        if status is not None:
            moved[job_id] = status
    return moved


def waiting_jobs(session: Session, *, queued_before: datetime, limit: int = 500) -> list[str]:
    """Queued jobs that have waited since before `queued_before`, oldest first: candidates
    for a new message to the workers, in case the one they had was lost."""
    return list(session.scalars(
        select(Job.id).where(Job.status == S.QUEUED, Job.queued_at < queued_before)
        .order_by(Job.queued_at, Job.id).limit(limit)))


def seconds_ago(seconds: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(seconds=seconds)
