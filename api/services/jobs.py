"""Creating, listing and steering fine-tuning jobs.

One way to create: `check_request` validates a creation request once (an Idempotency-Key
replay, the model, the files, the task and hyperparameters to train with), `new_job`
builds every job row (a single job, a sweep's parent and each of its children) and `save`
commits them, or hands back the job of a concurrent request that won with the same
Idempotency-Key. A job's queue position is counted when it is shown.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from api.errors import InvalidRequestError
from api.schemas import JobCreate, JobPublic
from api.services.base_models import check_base_model
from api.services.files import PURPOSE_FINE_TUNE, ensure_file_for_task, file_rows, file_task
from sage_core.artifacts import ArtifactStore
from sage_core.db import limits, transitions
from sage_core.db.events import add_event
from sage_core.db.ids import JOB, new_id
from sage_core.db.models import ApiKey, File, Job, JobStatus, utcnow
from sage_core.errors import ConflictError, InvalidSpecError
from sage_core.names import TaskName
from sage_core.schemas import Hyperparameters, JobSpec, check_resources
from sage_core.settings import Settings

S = JobStatus


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json", exclude_unset=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(session: Session, key: ApiKey, idempotency_key: str, digest: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key made, if any (409 if the body
    differed)."""
    job = session.scalar(select(Job).where(Job.owner_id == key.id,
                                           Job.idempotency_key == idempotency_key))
    if job is not None and job.request_hash != digest:
        raise ConflictError("Idempotency-Key reused with a different request body",
                            param="Idempotency-Key", code="idempotency_key_reused")
    return job


@dataclass(frozen=True)
class Checked:
    """A creation request once validated: the task, the hyperparameters to train with
    (the body's, or its method's) and the training file's examples (None if unknown), which
    n_epochs and validation_split "auto" resolve from."""

    task: TaskName
    hyperparameters: Hyperparameters
    train_rows: int | None = None


def _owned_file(session: Session, key: ApiKey, file_id: str, param: str) -> File:
    """The key's file, uploaded for fine-tuning; the error names the field at fault."""
    row = session.scalar(select(File).where(File.id == file_id, File.owner_id == key.id))
    if row is None:
        raise InvalidRequestError(f"No such file: '{file_id}'", param=param,
                                  code="invalid_file")
    if row.purpose != PURPOSE_FINE_TUNE:
        raise InvalidRequestError(f"file {file_id} has purpose '{row.purpose}', "
                                  f"not '{PURPOSE_FINE_TUNE}'", param=param, code="invalid_file")
    return row


def hyperparameters_of(body: JobCreate) -> Hyperparameters:
    """The top-level `hyperparameters` or, in OpenAI's newer shape, `method.supervised.
    hyperparameters`; both at once is a 400 (param "method")."""
    inner = body.method.supervised.hyperparameters if (
        body.method is not None and body.method.supervised is not None) else None
    if inner is None:
        return body.hyperparameters
    if "hyperparameters" in body.model_fields_set:
        raise InvalidRequestError(
            "give hyperparameters either at the top level or in "
            "method.supervised.hyperparameters, not both", param="method",
            code="invalid_value")
    return inner


def _resolvable(body: JobCreate, task: TaskName, hyperparameters: Hyperparameters,
                train_rows: int | None) -> None:
    """The hyperparameters apply to the task (e.g. lora only to chat and completion), the
    files (no validation_split with a validation file) and the resources (a batch of at
    least one example per GPU): a 400 naming the field as the request gave it."""
    try:
        resolved = hyperparameters.resolve(task, train_rows=train_rows,
                                           has_validation=body.validation_file is not None)
    except InvalidSpecError as exc:
        if exc.param and hyperparameters is not body.hyperparameters:
            exc.param = f"method.supervised.{exc.param}"
        raise
    check_resources(body.resources, resolved)


def _reportable(body: JobCreate, settings: Settings) -> None:
    """An mlflow integration without a tracking_uri goes to the operator's default, which
    must be set."""
    for index, integration in enumerate(body.integrations):
        if (integration.mlflow is not None and integration.mlflow.tracking_uri is None
                and not settings.mlflow_tracking_uri):
            raise InvalidRequestError(
                "this server has no default MLflow tracking server "
                "(SAGETRAIN_MLFLOW_TRACKING_URI); give an http(s) tracking_uri",
                param=f"integrations[{index}].mlflow.tracking_uri", code="invalid_value")


def prepare_insert(session: Session, key: ApiKey, body: JobCreate, settings: Settings, *,
                   jobs: int) -> None:
    """In the transaction that inserts a request's `jobs` jobs, before the insert: the key
    may queue that many now (429 if not; the key's row stays locked until the commit, so
    that its concurrent requests are counted one after the other), and the files the body
    names are still there, share-locked until the commit. A concurrent delete of one (which
    locks its row for update, `files.delete_file`) then waits and sees the job, or went
    first and the file is gone (400): never both."""
    if limits.job_limits_apply(key, settings):
        limits.lock_key(session, key)
        limits.check_job_creation(session, key, settings, jobs=jobs)
    named = {"training_file": body.training_file, "validation_file": body.validation_file}
    wanted = [file_id for file_id in named.values() if file_id is not None]
    held = set(session.scalars(select(File.id).where(
        File.id.in_(wanted), File.owner_id == key.id).with_for_update(read=True)))
    for param, file_id in named.items():
        if file_id is not None and file_id not in held:
            raise InvalidRequestError(f"No such file: '{file_id}'", param=param,
                                      code="invalid_file")


def check_request(session: Session, key: ApiKey, body: JobCreate, *,
                  idempotency_key: str | None, store: ArtifactStore,
                  settings: Settings) -> Job | Checked:
    """Validate a creation request (a job or a sweep): the job an earlier request with the
    same Idempotency-Key made, if any; else, once the model is in the catalog, each file the
    body names is the key's, for fine-tuning and holds data for the task, and the
    hyperparameters apply to it, the task (the body's, else the training file's) and the
    hyperparameters to train with."""
    if idempotency_key and (earlier := replay(session, key, idempotency_key,
                                              request_hash(body))):
        return earlier
    hyperparameters = hyperparameters_of(body)
    training = _owned_file(session, key, body.training_file, "training_file")
    task = body.task or file_task(training)
    # a fine-tuned model ("ft:...") trains further on its own task
    check_base_model(session, key, body.model, settings, task=task,
                     architecture=hyperparameters.architecture)
    validation = None if body.validation_file is None else _owned_file(
        session, key, body.validation_file, "validation_file")
    # The reads are done: no transaction (on SQLite, the write lock) stays open while the
    # files are read from the artifact store, which may be a network call.
    session.commit()
    ensure_file_for_task(training, task, store, settings, "training_file")
    if validation is not None:
        ensure_file_for_task(validation, task, store, settings, "validation_file")
    train_rows = file_rows(training)
    _resolvable(body, task, hyperparameters, train_rows)
    _reportable(body, settings)
    return Checked(task=task, hyperparameters=hyperparameters, train_rows=train_rows)


def seed_for(body: JobCreate) -> int:
    # OpenAI's behaviour: with no seed given, one is chosen, stored and shown on the job.
    return body.seed if body.seed is not None else secrets.randbelow(2**31)


def new_job(key: ApiKey, body: JobCreate, *, task: TaskName, seed: int,
            hyperparameters: Hyperparameters, train_rows: int | None, now: datetime,
            status: str = S.QUEUED, **columns: Any) -> Job:
    """A job row for the request (added by the caller): the body's model, files, suffix
    and metadata, trained for `task` with `hyperparameters` (resolved here, for a training
    file of `train_rows` examples); queued at `now` unless another status is given.
    `columns`: any other column's value."""
    job_id = new_id(JOB)
    spec = JobSpec(model=body.model, task=task, seed=seed, hyperparameters=hyperparameters,
                   resources=body.resources, integrations=body.integrations).resolve(
        train_rows=train_rows, has_validation=body.validation_file is not None)
    return Job(id=job_id, owner_id=key.id, model=body.model, task=task,
               spec=spec.model_dump(mode="json"), seed=seed, suffix=body.suffix,
               user_metadata=body.metadata, training_file_id=body.training_file,
               validation_file_id=body.validation_file, status=status, created_at=now,
               queued_at=now if status == S.QUEUED else None,
               artifact_prefix=f"jobs/{job_id}", result_file_ids=[], **columns)


def save(session: Session, key: ApiKey, body: JobCreate, idempotency_key: str | None,
         job: Job) -> tuple[JobPublic, bool]:
    """Commit the rows added for a request, `job` the one to answer with. Returns (job as
    shown, True); or, if a concurrent request with the same Idempotency-Key won the insert,
    its job and False (nothing of this one is kept)."""
    try:
        session.flush()
        shown = to_public(session, [job])[0]  # before the commit: one transaction
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = replay(session, key, idempotency_key, request_hash(body)) \
            if idempotency_key else None
        if earlier is None:
            raise
        return to_public(session, [earlier])[0], False
    return shown, True


def create_job(session: Session, key: ApiKey, body: JobCreate, *, idempotency_key: str | None,
               store: ArtifactStore, settings: Settings) -> tuple[JobPublic, bool]:
    """Validate and queue a job. Returns (job, created); created is False on a replay."""
    checked = check_request(session, key, body, idempotency_key=idempotency_key,
                            store=store, settings=settings)
    if isinstance(checked, Job):
        return to_public(session, [checked])[0], False
    prepare_insert(session, key, body, settings, jobs=1)
    job = new_job(key, body, task=checked.task, seed=seed_for(body),
                  hyperparameters=checked.hyperparameters, train_rows=checked.train_rows,
                  now=utcnow(),
                  idempotency_key=idempotency_key,
                  request_hash=request_hash(body) if idempotency_key else None)
    session.add(job)
    add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    return save(session, key, body, idempotency_key, job)


@cache
def queue_position() -> ColumnElement[int | None]:
    """SQL for a job's 1-based place among all queued jobs (of every key), in (queued_at,
    id) order: one plus the queued jobs ahead of it, counted; NULL for a job not queued.
    Built once: building the alias costs more CPU than running the query."""
    ahead = aliased(Job)
    count = (select(func.count()).select_from(ahead).where(
        ahead.status == S.QUEUED,
        or_(ahead.queued_at < Job.queued_at,
            and_(ahead.queued_at == Job.queued_at, ahead.id < Job.id)))
        .correlate(Job).scalar_subquery())
    return case((Job.status == S.QUEUED, count + 1), else_=None)


@cache
def _positions_query() -> Select[str, int | None]:
    return select(Job.id, queue_position()).where(Job.id.in_(bindparam("ids", expanding=True)))


def queue_positions(session: Session, jobs: list[Job]) -> dict[str, int | None]:
    """The queue position of each queued job given (see `queue_position`)."""
    queued = [j.id for j in jobs if j.status == S.QUEUED]
    if not queued:
        return {}
    return dict(session.execute(_positions_query(), {"ids": queued}).tuples().all())


def to_public(session: Session, jobs: list[Job]) -> list[JobPublic]:
    positions = queue_positions(session, jobs)
    return [JobPublic.from_row(job, positions.get(job.id)) for job in jobs]


def cancel_job(session: Session, job: Job) -> None:
    """Cancel the job; one already cancelled (by a concurrent request too) is answered as
    it is. `job` is read again after the UPDATE: the status its caller read may be stale."""
    if transitions.cancel(session, job.id):
        add_event(session, job.id, "Job cancelled")
        session.commit()
    session.refresh(job)
    if job.status != S.CANCELLED:
        raise ConflictError(f"Job {job.id} has already {job.status}; it cannot be cancelled",
                            param="fine_tuning_job_id", code="invalid_job_state")


def pause_job(session: Session, job: Job) -> None:
    was = job.status
    if transitions.request_pause(session, job.id):
        add_event(session, job.id, "Pause requested" if was == S.RUNNING else "Job paused")
        session.commit()
        session.refresh(job)
        return
    session.refresh(job)  # the status read before may be stale (a concurrent pause)
    if job.status != S.PAUSED:
        raise ConflictError(f"Job {job.id} is {job.status}; only a queued or running job can "
                            "be paused", param="fine_tuning_job_id", code="invalid_job_state")


def resume_job(session: Session, job: Job, settings: Settings) -> bool:
    """paused -> queued (True: dispatch it), if the key's quota of jobs queued or running
    has room (429 if not). A running job asked to pause keeps running."""
    owner = session.get(ApiKey, job.owner_id)
    if (job.status == S.PAUSED and owner is not None
            and limits.running_jobs_quota(owner, settings) is not None):
        limits.lock_key(session, owner)
        session.refresh(job)  # read after the lock: a concurrent resume may have moved it
        if job.status == S.PAUSED:
            limits.check_running_jobs(session, owner, settings)
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
