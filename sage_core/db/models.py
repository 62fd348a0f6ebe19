"""Typed SQLAlchemy models: api_keys, files, jobs, job_events, job_metrics, checkpoints,
workers, webhook_endpoints, webhook_deliveries.

Every public row id is a string from `sage_core.db.ids`; lists page on (created_at, id).
Timestamps are timezone-aware UTC on every backend (`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, also on SQLite (which stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


ID = String(64)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings, never enough to use
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # The key's own quotas (sage_core/db/limits.py); NULL: the server's default.
    max_running_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_owner_created", "owner_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))  # the user's name: metadata only
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default="processed")
    task: Mapped[str | None] = mapped_column(String(32), default=None)  # task it validated for
    stats: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_created", "owner_id", "created_at", "id"),
        Index("ix_jobs_status_queued", "status", "queued_at"),
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column()  # ResolvedSpec.model_dump()
    seed: Mapped[int] = mapped_column(BigInteger)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    training_file_id: Mapped[str] = mapped_column(ID)  # no FK: a job outlives its files
    validation_file_id: Mapped[str | None] = mapped_column(ID, default=None)
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # worker bookkeeping
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # runs started, pauses included
    # Runs that ended with the worker gone (lease expired, transient error); capped by
    # settings.max_lost_leases, so that a job that keeps killing its worker ends up failed.
    lost_leases: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set while the job is queued asking for more GPUs than any live worker has
    # (sage_core/db/placement.py); it fails with insufficient_gpus after gpu_wait_seconds.
    waiting_for_gpus_since: Mapped[datetime | None] = mapped_column(default=None)
    # progress
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, default=None)
    epoch: Mapped[float] = mapped_column(Float, default=0.0)
    estimated_finish: Mapped[datetime | None] = mapped_column(default=None)
    # results
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(400), default=None)
    result_file_ids: Mapped[list[Any]] = mapped_column(default=list)
    # the final model's sensitivity report (sage_core/training/sensitivity.py); None until
    # the job succeeds, and after it without a validation file
    sensitivity: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # what makes the final model doubtful (sage_core/training/verdicts.py), [{code,
    # message}], written when the job succeeds; None before, and for jobs older than 0008
    warnings: Mapped[list[Any] | None] = mapped_column(default=None)
    artifact_prefix: Mapped[str] = mapped_column(String(256))  # jobs/<id> in the store
    # Sweeps (sage_core/db/sweeps.py): a child job names its parent (no FK, as for files: a
    # child is an ordinary job); the parent holds its grid, its children's ids and, once
    # settled, the best child's id. Both NULL for an ordinary job.
    parent_id: Mapped[str | None] = mapped_column(ID, default=None, index=True)
    sweep: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Idempotency-Key header and a hash of the request body it came with
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_created", "job_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8))  # info | warn | error
    type: Mapped[str] = mapped_column(String(16), default="message")  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class JobMetric(Base):
    __tablename__ = "job_metrics"
    __table_args__ = (Index("ix_job_metrics_job_step", "job_id", "step", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))  # train | eval
    data: Mapped[dict[str, Any]] = mapped_column()  # the logged row as the engine gave it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),
        Index("ix_checkpoints_job_created", "job_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    storage_key: Mapped[str] = mapped_column(String(256))
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A live worker and what it can hold (sage_core/db/placement.py): a row per worker,
    renewed by its heartbeat, deleted when it shuts down; a row whose heartbeat is older
    than a lease belongs to a worker that is gone."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # its Celery node name
    host: Mapped[str] = mapped_column(String(200))
    slots: Mapped[int] = mapped_column(Integer)  # GPUs, or processes on a CPU-only worker
    gpus: Mapped[list[Any] | None] = mapped_column(default=None)  # its GPU ids; None: CPU
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class JobStatus:
    """The job states (strings in the database)."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class WebhookEndpoint(Base):
    """A URL that receives a key's job events, signed with its own secret."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_owner_created", "owner_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    # Kept as given: the server signs with it, so it cannot be hashed like an API key.
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[Any]] = mapped_column()
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint; its id is the `webhook-id` header, the same on retries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ID)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
