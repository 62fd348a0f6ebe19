"""Creating, listing and steering fine-tuning jobs."""

from __future__ import annotations

import hashlib
import json
import secrets
from functools import cache

from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from api.errors import InvalidRequestError
from api.schemas import JobCreate, JobPublic
from api.services.files import PURPOSE_FINE_TUNE, ensure_file_for_task
from sage_core.artifacts import ArtifactStore
from sage_core.catalog import resolve_model
from sage_core.db import transitions
from sage_core.db.events import add_event
from sage_core.db.ids import JOB, new_id
from sage_core.db.models import ApiKey, File, Job, JobStatus, utcnow
from sage_core.errors import ConflictError
from sage_core.schemas import JobSpec
from sage_core.settings import Settings

S = JobStatus


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json", exclude_unset=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# Positions computed along with a job's lookup (deps.get_owned_job), kept in session.info
# for the rest of the request; dropped whenever a handler changes a job's state.
_KNOWN_POSITIONS = "queue_positions"


@cache
def queue_position_expr() -> ColumnElement[int | None]:
    """SQL for a job's 1-based place among all queued jobs, NULL if it is not queued: one
    correlated count, evaluated only for queued rows. Built once: constructing the alias
    costs more CPU than running the query."""
    ahead = aliased(Job)
    count = (select(func.count()).select_from(ahead).where(
        ahead.status == S.QUEUED,
        or_(ahead.queued_at < Job.queued_at,
            and_(ahead.queued_at == Job.queued_at, ahead.id < Job.id)))
        .correlate(Job).scalar_subquery())
    return case((Job.status == S.QUEUED, count + 1), else_=None)


@cache
def _position() -> Select[int | None]:
    return select(queue_position_expr()).where(Job.id == bindparam("job_id"))


@cache
def _owned_file() -> Select[File]:
    return select(File).where(File.id == bindparam("file_id"),
                              File.owner_id == bindparam("owner_id"))


def remember_position(session: Session, job_id: str, position: int | None) -> None:
    session.info.setdefault(_KNOWN_POSITIONS, {})[job_id] = position


def forget_positions(session: Session) -> None:
    session.info.pop(_KNOWN_POSITIONS, None)


def queue_positions(session: Session, jobs: list[Job]) -> dict[str, int | None]:
    """1-based position among all queued jobs (of every key) for each queued job given."""
    known: dict[str, int | None] = session.info.get(_KNOWN_POSITIONS, {})
    positions = {j.id: known[j.id] for j in jobs if j.id in known}
    queued = [j.id for j in jobs if j.status == S.QUEUED and j.id not in positions]
    if len(queued) == 1:
        positions[queued[0]] = session.scalar(_position(), {"job_id": queued[0]})
    elif queued:
        order = session.scalars(select(Job.id).where(Job.status == S.QUEUED)
                                .order_by(Job.queued_at, Job.id)).all()
        wanted = set(queued)
        positions.update({job_id: i for i, job_id in enumerate(order, start=1)
                          if job_id in wanted})
    return positions


def _check_file(row: File | None, file_id: str, param: str) -> File:
    if row is None:
        raise InvalidRequestError(f"No such file: '{file_id}'", param=param,
                                  code="invalid_file")
    if row.purpose != PURPOSE_FINE_TUNE:
        raise InvalidRequestError(f"file {file_id} has purpose '{row.purpose}', "
                                  f"not '{PURPOSE_FINE_TUNE}'", param=param, code="invalid_file")
    return row


def _replay(session: Session, key: ApiKey, idempotency_key: str, digest: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key made, if any (409 if the body
    differed)."""
    job = session.scalar(select(Job).where(
        Job.owner_id == key.id, Job.idempotency_key == idempotency_key))
    if job is not None and job.request_hash != digest:
        raise ConflictError("Idempotency-Key reused with a different request body",
                            param="Idempotency-Key", code="idempotency_key_reused")
    return job


def create_job(session: Session, key: ApiKey, body: JobCreate, *, idempotency_key: str | None,
               store: ArtifactStore, settings: Settings,
               training_file: File | None = None) -> tuple[Job, bool]:
    """Validate and queue a job. Returns (job, created); created is False on a replay.
    `training_file`: the key's row for body.training_file when the caller has it already."""
    digest = request_hash(body) if idempotency_key else None
    if idempotency_key and digest and (earlier := _replay(session, key, idempotency_key, digest)):
        return earlier, False
    resolve_model(body.model, settings)
    for file_id, param in ((body.training_file, "training_file"),
                           (body.validation_file, "validation_file")):
        if file_id is not None:
            row = training_file if training_file is not None and training_file.id == file_id \
                else session.scalar(_owned_file(), {"file_id": file_id, "owner_id": key.id})
            ensure_file_for_task(_check_file(row, file_id, param), body.task, store, settings,
                                 param)
    # OpenAI's behaviour: with no seed given, one is chosen, stored and shown on the job.
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    spec = JobSpec(model=body.model, task=body.task, seed=seed,
                   hyperparameters=body.hyperparameters).resolve()
    job_id = new_id(JOB)
    now = utcnow()
    job = Job(id=job_id, owner_id=key.id, model=body.model, task=body.task,
              spec=spec.model_dump(mode="json"), seed=seed, suffix=body.suffix,
              user_metadata=body.metadata, training_file_id=body.training_file,
              validation_file_id=body.validation_file, status=S.QUEUED, created_at=now,
              queued_at=now, artifact_prefix=f"jobs/{job_id}", result_file_ids=[],
              idempotency_key=idempotency_key, request_hash=digest)
    session.add(job)
    add_event(session, job_id, f"Created fine-tuning job: {job_id}")
    try:
        session.flush()
        # In the same transaction, so the answer needs no second one.
        remember_position(session, job_id, session.scalar(_position(), {"job_id": job_id}))
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        session.rollback()
        if idempotency_key and digest and (
                earlier := _replay(session, key, idempotency_key, digest)):
            return earlier, False
        raise
    return job, True


def to_public(session: Session, jobs: list[Job]) -> list[JobPublic]:
    positions = queue_positions(session, jobs)
    return [JobPublic.from_row(job, positions.get(job.id)) for job in jobs]


def cancel_job(session: Session, job: Job) -> None:
    forget_positions(session)
    if transitions.cancel(session, job.id):
        add_event(session, job.id, "Job cancelled")
        session.commit()
    elif job.status != S.CANCELLED:
        raise ConflictError(f"Job {job.id} has already {job.status}; it cannot be cancelled",
                            param="fine_tuning_job_id", code="invalid_job_state")
    session.refresh(job)


def pause_job(session: Session, job: Job) -> None:
    forget_positions(session)
    if transitions.request_pause(session, job.id):
        add_event(session, job.id, "Pause requested" if job.status == S.RUNNING else "Job paused")
        session.commit()
    elif job.status != S.PAUSED:
        raise ConflictError(f"Job {job.id} is {job.status}; only a queued or running job can "
                            "be paused", param="fine_tuning_job_id", code="invalid_job_state")
    session.refresh(job)


def resume_job(session: Session, job: Job) -> bool:
    """paused -> queued (True: dispatch it). A running job asked to pause keeps running."""
    forget_positions(session)
    if transitions.resume(session, job.id):
        add_event(session, job.id, "Job resumed; queued to continue from its last checkpoint")
        session.commit()
        session.refresh(job)
        return True
    if transitions.withdraw_pause(session, job.id):
        add_event(session, job.id, "Pause withdrawn; the job keeps running")
        session.commit()
        session.refresh(job)
        return False
    if job.status not in (S.QUEUED, S.RUNNING):
        raise ConflictError(f"Job {job.id} is {job.status}; only a paused job can be resumed",
                            param="fine_tuning_job_id", code="invalid_job_state")
    return False
