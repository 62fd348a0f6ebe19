"""Creating, listing and steering fine-tuning jobs."""

from __future__ import annotations

import hashlib
import json
import secrets

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

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


def _training_file(session: Session, key: ApiKey, file_id: str, param: str) -> File:
    row = session.scalar(select(File).where(File.id == file_id, File.owner_id == key.id))
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
               store: ArtifactStore, settings: Settings) -> tuple[Job, bool]:
    """Validate and queue a job. Returns (job, created); created is False on a replay."""
    digest = request_hash(body)
    if idempotency_key and (earlier := _replay(session, key, idempotency_key, digest)):
        return earlier, False
    resolve_model(body.model, settings)
    training = _training_file(session, key, body.training_file, "training_file")
    ensure_file_for_task(training, body.task, store, settings, "training_file")
    if body.validation_file is not None:
        validation = _training_file(session, key, body.validation_file, "validation_file")
        ensure_file_for_task(validation, body.task, store, settings, "validation_file")
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
              idempotency_key=idempotency_key, request_hash=digest if idempotency_key else None)
    session.add(job)
    add_event(session, job_id, f"Created fine-tuning job: {job_id}")
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        session.rollback()
        if idempotency_key and (earlier := _replay(session, key, idempotency_key, digest)):
            return earlier, False
        raise
    return job, True


def queue_positions(session: Session, jobs: list[Job]) -> dict[str, int]:
    """1-based position among all queued jobs (of every key) for each queued job given."""
    queued = [j for j in jobs if j.status == S.QUEUED]
    if not queued:
        return {}
    if len(queued) == 1:
        job = queued[0]
        ahead = session.scalar(select(func.count()).select_from(Job).where(
            Job.status == S.QUEUED,
            (Job.queued_at < job.queued_at) | ((Job.queued_at == job.queued_at)
                                               & (Job.id < job.id))))
        return {job.id: int(ahead or 0) + 1}
    order = session.scalars(select(Job.id).where(Job.status == S.QUEUED)
                            .order_by(Job.queued_at, Job.id)).all()
    wanted = {j.id for j in queued}
    return {job_id: i for i, job_id in enumerate(order, start=1) if job_id in wanted}


def to_public(session: Session, jobs: list[Job]) -> list[JobPublic]:
    positions = queue_positions(session, jobs)
    return [JobPublic.from_row(job, positions.get(job.id)) for job in jobs]


def cancel_job(session: Session, job: Job) -> None:
    if transitions.cancel(session, job.id):
        add_event(session, job.id, "Job cancelled")
        session.commit()
    elif job.status != S.CANCELLED:
        raise ConflictError(f"Job {job.id} has already {job.status}; it cannot be cancelled",
                            param="fine_tuning_job_id", code="invalid_job_state")
    session.refresh(job)


def pause_job(session: Session, job: Job) -> None:
    if transitions.request_pause(session, job.id):
        add_event(session, job.id, "Pause requested" if job.status == S.RUNNING else "Job paused")
        session.commit()
    elif job.status != S.PAUSED:
        raise ConflictError(f"Job {job.id} is {job.status}; only a queued or running job can "
                            "be paused", param="fine_tuning_job_id", code="invalid_job_state")
    session.refresh(job)


def resume_job(session: Session, job: Job) -> bool:
    """paused -> queued (True: dispatch it). A running job asked to pause keeps running."""
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
