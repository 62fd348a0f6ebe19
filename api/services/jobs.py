"""Creating, listing and steering fine-tuning jobs."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache, partial
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Insert,
    Select,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    table,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, make_transient_to_detached

from api.errors import AuthenticationError, InvalidRequestError
from api.schemas import JobCreate, JobPublic
from api.services.files import PURPOSE_FINE_TUNE, ensure_file_for_task
from sage_core.artifacts import ArtifactStore
from sage_core.catalog import resolve_model
from sage_core.db import transitions
from sage_core.db.events import EventValues, add_event, insert_event, log_event, new_event
from sage_core.db.ids import JOB, new_id
from sage_core.db.models import ApiKey, File, Job, JobEvent, JobStatus, utcnow
from sage_core.errors import ConflictError, SageTrainError
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


@cache
def _replay_query() -> Select[Job]:
    # Only for a live key: the caller's key may come from a cache (api/deps.py).
    return select(Job).join(ApiKey, ApiKey.id == Job.owner_id).where(
        Job.owner_id == bindparam("owner_id"),
        Job.idempotency_key == bindparam("idempotency_key"), ApiKey.revoked_at.is_(None))


def replay(session: Session, key: ApiKey, idempotency_key: str, digest: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key made, if any (409 if the body
    differed)."""
    job = session.scalar(_replay_query(), {"owner_id": key.id,
                                           "idempotency_key": idempotency_key})
    if job is not None and job.request_hash != digest:
        raise ConflictError("Idempotency-Key reused with a different request body",
                            param="Idempotency-Key", code="idempotency_key_reused")
    return job


def check_files(session: Session, key: ApiKey, body: JobCreate, store: ArtifactStore,
                 settings: Settings, training_file: File | None) -> None:
    """Each file the body names: the key's, for fine-tuning, valid for the task (a file
    validated for another task is parsed again); the error names the field at fault."""
    for file_id, param in ((body.training_file, "training_file"),
                           (body.validation_file, "validation_file")):
        if file_id is not None:
            row = training_file if training_file is not None and training_file.id == file_id \
                else session.scalar(_owned_file(), {"file_id": file_id, "owner_id": key.id})
            ensure_file_for_task(_check_file(row, file_id, param), body.task, store, settings,
                                 param)


def _file_ready(file_param: str) -> ColumnElement[bool]:
    """The key owns the file, uploaded for fine-tuning and validated for the job's task."""
    return exists().where(File.id == bindparam(file_param, type_=File.id.type),
                          File.owner_id == bindparam("owner_id", type_=File.owner_id.type),
                          File.purpose == PURPOSE_FINE_TUNE,
                          File.task == bindparam("task", type_=File.task.type))


@cache
def _job_defaults() -> dict[str, Callable[[], Any]]:
    """Column key -> its default's value maker, for every jobs column (None if it has none)."""
    makers: dict[str, Callable[[], Any]] = {}
    for column in Job.__table__.c:
        default = column.default
        if default is None:
            makers[column.key] = lambda: None
        elif default.is_callable:  # wrapped by SQLAlchemy to take an execution context
            makers[column.key] = partial(default.arg, None)  # type: ignore[attr-defined]
        else:
            makers[column.key] = partial(lambda value: value, default.arg)  # type: ignore[attr-defined]
    return makers


def _row_values(given: dict[str, Any]) -> dict[str, Any]:
    """Every column's value: the given ones, the column default for the rest. The insert
    writes exactly these, and the Job handed back is built from them: no reading back."""
    return {key: given[key] if key in given else make() for key, make in _job_defaults().items()}


@cache
def _attribute_of_column() -> dict[str, str]:
    return {prop.columns[0].key: prop.key for prop in Job.__mapper__.column_attrs}


def _job_from(values: dict[str, Any]) -> Job:
    """The inserted row as a detached Job, filled the way the ORM's loader fills one (its
    __dict__ holds the loaded values): Job(**values) would fire an attribute event per
    column, about a tenth of a job creation's CPU under a profiler (yappi)."""
    names = _attribute_of_column()
    job: Job = Job.__mapper__.class_manager.new_instance()
    job.__dict__.update({names[key]: value for key, value in values.items()})
    make_transient_to_detached(job)  # the row exists: a detached object, not a new one
    return job


@cache
def _insert_job(*, files_checked: bool) -> Insert:
    """INSERT INTO jobs ... SELECT <every column's value> WHERE the key is live (and, unless
    the files were checked already, every file the body names is ready): no row means a
    guard failed, and the careful path says which. The key is checked in the statement that
    writes, so a revoked key can never create a job."""
    columns = list(Job.__table__.c)
    guards: list[ColumnElement[bool]] = [exists().where(
        ApiKey.id == bindparam("owner_id", type_=ApiKey.id.type), ApiKey.revoked_at.is_(None))]
    if not files_checked:
        guards += [_file_ready("training_file_id"),
                   or_(bindparam("validation_file_id", type_=File.id.type).is_(None),
                       _file_ready("validation_file_id"))]
    values = select(*(bindparam(c.key, type_=c.type) for c in columns)).where(*guards)
    # On the Table, not the entity: a Core INSERT, whose parameters are column keys.
    jobs = cast(Table, Job.__table__)
    return insert(jobs).from_select(columns, values, include_defaults=False).returning(
        jobs.c.id, jobs.c.created_at, jobs.c.queued_at)


@cache
def _insert_job_with_event(*, files_checked: bool) -> Select[int]:
    """PostgreSQL: the job, its creation event and its queue position in one statement (and
    one round trip). The position is one plus the queued jobs counted in job_queue_counts,
    which a trigger on jobs keeps (migrations/versions/0006_queue_counts.py): O(1) whatever
    the queue depth. The sum reads the snapshot the statement started with, which holds
    neither the new row nor its trigger's +1: a new job's place is one after every job
    already queued. (GET's count by queued_at agrees unless another server's clock gave a
    job already queued a later queued_at.)"""
    j = _insert_job(files_checked=files_checked).cte("new_job")
    event = insert(JobEvent).from_select(
        [JobEvent.id, JobEvent.job_id, JobEvent.created_at, JobEvent.level, JobEvent.type,
         JobEvent.message],
        select(bindparam("event_id", type_=JobEvent.id.type), j.c.id, j.c.created_at,
               bindparam("event_level", type_=JobEvent.level.type),
               bindparam("event_type", type_=JobEvent.type.type),
               bindparam("event_message", type_=JobEvent.message.type))).cte("new_event")
    # sum(bigint) is numeric in PostgreSQL: cast, or the driver answers a Decimal
    queued = select(func.sum(literal_column("queued")).cast(BigInteger)).select_from(
        table("job_queue_counts")).scalar_subquery()
    return select(func.coalesce(queued, 0) + 1).select_from(j).add_cte(event)


def _insert(session: Session, values: dict[str, Any], event: EventValues, *,
            files_checked: bool) -> Job | None:
    """Insert the job and its creation event; None (nothing written) if a guard failed."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        statement = _insert_job_with_event(files_checked=files_checked)
        params = {**values, "event_id": event.id, "event_level": event.level,
                  "event_type": event.type, "event_message": event.message}
        if session.in_transaction() or not isinstance(bind, Engine):
            position = session.execute(statement, params).scalar_one_or_none()
        else:
            # One statement needs no transaction: run it alone (autocommit) on a pooled
            # connection, without the session's transaction bookkeeping.
            with bind.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                position = conn.execute(statement, params).scalar_one_or_none()
        if position is None:
            return None
    else:  # no INSERT inside WITH: three statements in the one transaction
        if session.execute(_insert_job(files_checked=files_checked), values).first() is None:
            return None
        session.execute(insert_event(), event.params())
        position = session.scalar(_position(), {"job_id": values["id"]})
    remember_position(session, values["id"], position)
    return _job_from(values)


def key_is_live(session: Session, key: ApiKey) -> bool:
    return session.scalar(_live_key(), {"key_id": key.id}) is not None


@cache
def _live_key() -> Select[str]:
    return select(ApiKey.id).where(ApiKey.id == bindparam("key_id"), ApiKey.revoked_at.is_(None))


def create_job(session: Session, key: ApiKey, body: JobCreate, *, idempotency_key: str | None,
               store: ArtifactStore, settings: Settings,
               training_file: File | None = None) -> tuple[Job, bool]:
    """Validate and queue a job. Returns (job, created); created is False on a replay.
    `training_file`: the key's row for body.training_file when the caller has it already.

    The job, its creation event and (on PostgreSQL) its queue position are written and read
    in one statement that also checks the key and the files; only when that writes nothing
    are the files looked up one by one, to say what is wrong with them (or to validate one
    for another task), and the insert tried again. Every answer is for a live key only: the
    key may come from a cache (api/deps.py), so an error re-reads it."""
    with answers_for_live_key(session, key):
        return _create_job(session, key, body, idempotency_key=idempotency_key, store=store,
                           settings=settings, training_file=training_file)


@contextmanager
def answers_for_live_key(session: Session, key: ApiKey) -> Iterator[None]:
    """An error raised inside becomes 401 if the key has been revoked: the key may come from
    the cache of api/deps.py, and a revoked key must learn nothing else."""
    try:
        yield
    except SageTrainError as exc:
        if not isinstance(exc, AuthenticationError) and not key_is_live(session, key):
            raise AuthenticationError("Incorrect API key provided.") from None
        raise


def _create_job(session: Session, key: ApiKey, body: JobCreate, *, idempotency_key: str | None,
                store: ArtifactStore, settings: Settings,
                training_file: File | None) -> tuple[Job, bool]:
    digest = request_hash(body) if idempotency_key else None
    if idempotency_key and digest and (earlier := replay(session, key, idempotency_key, digest)):
        return earlier, False
    resolve_model(body.model, settings)
    if training_file is not None:  # no I/O: refuse a file the caller already holds early
        _check_file(training_file, training_file.id, "training_file")
    # OpenAI's behaviour: with no seed given, one is chosen, stored and shown on the job.
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    try:
        spec = JobSpec(model=body.model, task=body.task, seed=seed,
                       hyperparameters=body.hyperparameters).resolve()
    except Exception:
        check_files(session, key, body, store, settings, training_file)  # reported first
        raise
    job_id = new_id(JOB)
    now = utcnow()
    values = _row_values({
        "id": job_id, "owner_id": key.id, "model": body.model, "task": body.task,
        "spec": spec.model_dump(mode="json"), "seed": seed, "suffix": body.suffix,
        "metadata": body.metadata, "training_file_id": body.training_file,
        "validation_file_id": body.validation_file, "status": S.QUEUED, "created_at": now,
        "queued_at": now, "artifact_prefix": f"jobs/{job_id}", "result_file_ids": [],
        "idempotency_key": idempotency_key, "request_hash": digest})
    event = new_event(job_id, f"Created fine-tuning job: {job_id}", created_at=now)
    try:
        job = _insert(session, values, event, files_checked=False)
        if job is None:
            if not key_is_live(session, key):
                raise AuthenticationError("Incorrect API key provided.")
            check_files(session, key, body, store, settings, training_file)
            job = _insert(session, values, event, files_checked=True)
            if job is None:  # the key was revoked in between
                raise AuthenticationError("Incorrect API key provided.")
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the insert.
        session.rollback()
        if idempotency_key and digest and (
                earlier := replay(session, key, idempotency_key, digest)):
            return earlier, False
        raise
    log_event(event)
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
