"""Where jobs can run: the registry of live workers, and the queued jobs too big for all of
them.

- A job's size is `spec.resources.gpus` (the SQL expression `job_size`; 1 for jobs from
  before resources).
- Every Celery worker keeps a row in `workers` (its node name, host, slots, GPU ids),
  renewed every `heartbeat_seconds` (`beat`) and deleted when it shuts down (`leave`). A
  worker is live while its heartbeat is younger than `lease_seconds`: the rule that already
  decides that a job's worker is gone. The registry lives in the database, like the jobs,
  rather than in Redis: the reaper decides a job's fate from it in one transaction, it
  survives a Redis restart, and the embedded executor, which has no Redis, uses the same code.
- `hold_oversized(session, largest=K, wait_seconds=W)`: each queued job asking for more than
  K slots (the largest live worker's) is marked `waiting_for_gpus_since`, with one event
  saying so; once it has waited W seconds it fails with `insufficient_gpus`. A marked job that
  fits again (a big worker came back) is unmarked, with one event. The caller passes no K
  (None) when no worker is live: then nothing is decided, since a fleet that is down (a
  deploy) says nothing about what size of worker will come back.

Every change is a conditional UPDATE, so any number of reapers may run this at once; each
function runs in the caller's transaction.
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, Update, delete, func, select, update
from sqlalchemy.orm import Session

from sage_core.db import transitions
from sage_core.db.events import add_event
from sage_core.db.models import Job, JobStatus, Worker, utcnow

INSUFFICIENT_GPUS = "insufficient_gpus"
FORGET_WORKERS_AFTER = timedelta(days=1)  # rows of workers gone this long are deleted
job_size = func.coalesce(Job.spec[("resources", "gpus")].as_integer(), 1)


def _changed(session: Session, stmt: Update) -> bool:
    result = session.execute(stmt.execution_options(synchronize_session=False))
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def job_gpus(session: Session, job_id: str) -> int | None:
    """The slots the job asks for; None if there is no such job."""
    return session.scalar(select(job_size).where(Job.id == job_id))


# --- the registry ------------------------------------------------------------------------------

def beat(session: Session, worker_id: str, *, slots: int, gpus: list[str] | None,
         host: str | None = None, now: datetime | None = None) -> None:
    """Say that the worker is alive and holds `slots` (its `gpus`, or None on a CPU-only
    machine). The first beat adds its row; each worker beats from one thread only."""
    now = now or utcnow()
    if not _changed(session, update(Worker).where(Worker.id == worker_id).values(
            heartbeat_at=now, slots=slots, gpus=gpus)):
        session.add(Worker(id=worker_id, host=host or socket.gethostname(), slots=slots,
                           gpus=gpus, started_at=now, heartbeat_at=now))


def leave(session: Session, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def live_workers(session: Session, *, lease_seconds: float,
                 now: datetime | None = None) -> list[Worker]:
    since = (now or utcnow()) - timedelta(seconds=lease_seconds)
    return list(session.scalars(select(Worker).where(Worker.heartbeat_at >= since)
                                .order_by(Worker.id)))


def largest_live(session: Session, *, lease_seconds: float,
                 now: datetime | None = None) -> int | None:
    """The most slots any live worker has; None if no worker is live."""
    since = (now or utcnow()) - timedelta(seconds=lease_seconds)
    return session.scalar(select(func.max(Worker.slots)).where(Worker.heartbeat_at >= since))


def forget_gone_workers(session: Session, now: datetime | None = None) -> None:
    session.execute(delete(Worker).where(
        Worker.heartbeat_at < (now or utcnow()) - FORGET_WORKERS_AFTER))


# --- jobs too big for every worker ---------------------------------------------------------------

def hold_oversized(session: Session, *, largest: int | None, wait_seconds: float,
                   now: datetime | None = None) -> list[str]:
    """Mark, unmark or fail queued jobs by whether they fit `largest` slots (see the module
    docstring). Returns the ids of the jobs it failed."""
    if largest is None:
        return []
    now = now or utcnow()
    queued = Job.status == JobStatus.QUEUED
    # A job claimed (or paused) since it was marked: its wait is over.
    session.execute(update(Job).where(Job.status.in_([JobStatus.RUNNING, JobStatus.PAUSED]),
                                      Job.waiting_for_gpus_since.is_not(None))
                    .values(waiting_for_gpus_since=None)
                    .execution_options(synchronize_session=False))
    for job_id, gpus in session.execute(select(Job.id, job_size).where(
            queued, job_size <= largest, Job.waiting_for_gpus_since.is_not(None))).all():
        if _changed(session, update(Job).where(
                Job.id == job_id, queued, Job.waiting_for_gpus_since.is_not(None))
                .values(waiting_for_gpus_since=None)):
            add_event(session, job_id, f"A worker with {gpus} GPUs is live; the job waits "
                                       "for its turn")
    failed = []
    for job_id, gpus, since in session.execute(select(
            Job.id, job_size, Job.waiting_for_gpus_since).where(queued, job_size > largest)
            .order_by(Job.queued_at, Job.id)).all():
        if since is None:
            if _changed(session, update(Job).where(
                    Job.id == job_id, queued, Job.waiting_for_gpus_since.is_(None))
                    .values(waiting_for_gpus_since=now)):
                add_event(session, job_id, (
                    f"Waiting for a worker with {gpus} GPUs: the largest live worker has "
                    f"{largest}; the job fails if none joins within {wait_seconds:g} s"),
                    level="warn", data={"code": INSUFFICIENT_GPUS, "gpus": gpus,
                                        "largest_worker": largest})
        elif since <= now - timedelta(seconds=wait_seconds):
            error: dict[str, Any] = {
                "code": INSUFFICIENT_GPUS, "param": "resources.gpus", "message": (
                    f"the job asks for {gpus} GPUs, but the largest live worker has "
                    f"{largest}; none with enough joined in {wait_seconds:g} s")}
            if transitions.fail(session, job_id, error=error, allowed=(JobStatus.QUEUED,)):
                add_event(session, job_id, f"Fine-tuning job failed: {error['message']}",
                          level="error")
                failed.append(job_id)
    return failed
