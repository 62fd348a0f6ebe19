"""Every job status change, each one conditional UPDATE.

`UPDATE jobs SET status=:new ... WHERE id=:id AND status IN (:allowed)` changes one row or
none, and the caller learns which: a duplicate delivery, a dead worker that wakes up, or a
cancel racing a finish cannot put a job into two states. Transitions made by a worker also
require that it still holds the job's lease (`lease_owner`), so a worker whose lease
expired cannot overwrite the work of the one that took the job over.

Each function executes in the caller's session and transaction; the caller commits. A move
to succeeded, failed or cancelled also queues the job's webhook deliveries there, and, for
sweeps (`sage_core.db.sweeps`), cancels a cancelled parent's unfinished children and
settles an ended child's parent once all its children are final.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, Update, update
from sqlalchemy.orm import Session

from sage_core.db import sweeps
from sage_core.db.events import add_event
from sage_core.db.models import Job, JobStatus, utcnow
from sage_core.db.webhooks import enqueue_job_ended

S = JobStatus
CANCELLABLE = (S.VALIDATING_FILES, S.QUEUED, S.RUNNING, S.PAUSED)


def _changed(session: Session, stmt: Update) -> bool:
    result = session.execute(stmt.execution_options(synchronize_session=False))
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def transition(session: Session, job_id: str, *, to: str, allowed: Iterable[str],
               lease_owner: str | None = None, **values: Any) -> bool:
    """Move the job to `to` if it is in one of `allowed` (and held by `lease_owner`, if
    given), setting `values` too. True if this call changed the row."""
    final = to in S.FINAL
    # A sweep child's parent is locked before the child's row (sweeps: one lock order).
    parent_id = sweeps.lock_parent(session, job_id) if final else None
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(list(allowed)))
    if lease_owner is not None:
        stmt = stmt.where(Job.lease_owner == lease_owner)
    changed = _changed(session, stmt.values(status=to, **values))
    if changed and final:
        job_ended(session, job_id, to, parent_id=parent_id)
    return changed


def job_ended(session: Session, job_id: str, status: str, *, parent_id: str | None) -> None:
    """What follows a job's move to a final status, in the same transaction: its webhooks;
    a cancelled sweep's unfinished children cancelled; its sweep settled if it was the last
    child. `parent_id`: from `sweeps.lock_parent`, called before the job's UPDATE."""
    enqueue_job_ended(session, job_id)
    if status == S.CANCELLED:
        for child_id in sweeps.unfinished_children(session, job_id):
            if cancel(session, child_id):
                add_event(session, child_id, f"Job cancelled with its sweep {job_id}")
    if parent_id is not None:
        sweeps.settle(session, parent_id)


def queue(session: Session, job_id: str, *, allowed: Iterable[str] = (S.VALIDATING_FILES,),
          now: datetime | None = None) -> bool:
    return transition(session, job_id, to=S.QUEUED, allowed=allowed, queued_at=now or utcnow())


def claim(session: Session, job_id: str, *, owner: str, lease_seconds: float,
          now: datetime | None = None) -> bool:
    """queued -> running for the worker `owner`, with a fresh lease and the attempt counted."""
    now = now or utcnow()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == S.QUEUED)
        .values(
            status=S.RUNNING, lease_owner=owner, lease_expires_at=now + timedelta(
                seconds=lease_seconds), heartbeat_at=now, attempt=Job.attempt + 1,
            started_at=now, estimated_finish=None,
        )
    )
    return _changed(session, stmt)


def heartbeat(session: Session, job_id: str, *, owner: str, lease_seconds: float,
              now: datetime | None = None, **values: Any) -> bool:
    """Extend the lease of a running job `owner` holds; False if it lost the job."""
    now = now or utcnow()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == S.RUNNING, Job.lease_owner == owner)
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds),
                **values)
    )
    return _changed(session, stmt)


def succeed(session: Session, job_id: str, *, owner: str, **values: Any) -> bool:
    return transition(session, job_id, to=S.SUCCEEDED, allowed=(S.RUNNING,), lease_owner=owner,
                      finished_at=utcnow(), estimated_finish=None, pause_requested=False,
                      **values)


def fail(session: Session, job_id: str, *, error: dict[str, Any], owner: str | None = None,
         allowed: Iterable[str] = (S.RUNNING,)) -> bool:
    """running -> failed with `error` = {code, message, param}."""
    return transition(session, job_id, to=S.FAILED, allowed=allowed, lease_owner=owner,
                      error=error, finished_at=utcnow(), estimated_finish=None,
                      pause_requested=False)


def cancel(session: Session, job_id: str) -> bool:
    """Any unfinished job -> cancelled, at once. A running job's worker sees it and stops."""
    return transition(session, job_id, to=S.CANCELLED, allowed=CANCELLABLE,
                      finished_at=utcnow(), estimated_finish=None, pause_requested=False)


def request_pause(session: Session, job_id: str) -> bool:
    """A queued job pauses at once; a running one is asked to checkpoint and stop (its worker
    then calls `paused`). True if either happened."""
    if transition(session, job_id, to=S.PAUSED, allowed=(S.QUEUED,), estimated_finish=None):
        return True
    stmt = update(Job).where(Job.id == job_id, Job.status == S.RUNNING).values(
        pause_requested=True)
    return _changed(session, stmt)


def paused(session: Session, job_id: str, *, owner: str) -> bool:
    """running -> paused, by the worker that saved the checkpoint."""
    return transition(session, job_id, to=S.PAUSED, allowed=(S.RUNNING,), lease_owner=owner,
                      pause_requested=False, estimated_finish=None)


def resume(session: Session, job_id: str) -> bool:
    """paused -> queued (at the back of the queue); the next run resumes from a checkpoint."""
    return transition(session, job_id, to=S.QUEUED, allowed=(S.PAUSED,), queued_at=utcnow(),
                      pause_requested=False)


def requeue(session: Session, job_id: str, *, owner: str) -> bool:
    """running -> queued by its worker (it was told to shut down); it resumes later."""
    return transition(session, job_id, to=S.QUEUED, allowed=(S.RUNNING,), lease_owner=owner,
                      queued_at=utcnow(), estimated_finish=None)


def withdraw_pause(session: Session, job_id: str) -> bool:
    """A running job asked to pause keeps running after all."""
    stmt = update(Job).where(Job.id == job_id, Job.status == S.RUNNING,
                             Job.pause_requested.is_(True)).values(pause_requested=False)
    return _changed(session, stmt)
