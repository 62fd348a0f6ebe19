"""Per-key rate limits and quotas, counted from the rows themselves.

- Rate limits (settings.job_rate_limit, file_rate_limit): the key's jobs (a sweep once: its
  children are not counted) or uploaded files created in the last `rate_limit_window`
  seconds. Retry-After: when the oldest of them leaves the window.
- Quotas (the key's own, else the settings' default): `max_running_jobs`, the key's jobs
  that hold or wait for a worker (validating_files, queued, running; a sweep's parent
  trains nothing and is left out, paused jobs are too); `max_storage_bytes`, the bytes of
  every file of the key (uploads and the results its jobs left).

The state is the database's own rows, so every API process behind one address sees the same
counts, with Redis or without. The check and the insert it guards run in one transaction
that first locks the key's row (`lock_key`): two requests of one key are counted one after
the other, so a limit of N lets exactly N through. Over a limit: RateLimitError (429).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from sage_core.db.models import ApiKey, File, Job, JobStatus, utcnow
from sage_core.errors import RateLimitError
from sage_core.settings import Settings
from sage_core.sizes import format_size

S = JobStatus
ACTIVE = (S.VALIDATING_FILES, S.QUEUED, S.RUNNING)
UPLOADED = "fine-tune"  # the purpose of a user's upload (results files are the jobs')
# A quota frees up when a job ends or a file is deleted: a hint, not a promise.
QUOTA_RETRY_SECONDS = 60


def job_limits_apply(key: ApiKey, settings: Settings) -> bool:
    """Whether any limit applies to `key`'s job creations (if none, nothing is locked)."""
    return settings.job_rate_limit is not None or running_jobs_quota(key, settings) is not None


def file_limits_apply(key: ApiKey, settings: Settings) -> bool:
    """Whether any limit applies to `key`'s uploads."""
    return settings.file_rate_limit is not None or storage_quota(key, settings) is not None


def lock_key(session: Session, key: ApiKey) -> None:
    """Hold the key's row until the transaction ends, so that the checks and inserts of two
    requests of one key do not interleave. PostgreSQL: a row lock (UPDATE). SQLite: the
    UPDATE takes the database's write lock (if BEGIN IMMEDIATE has not already)."""
    session.execute(update(ApiKey).where(ApiKey.id == key.id).values(id=ApiKey.id)
                    .execution_options(synchronize_session=False))


def _retry_after(oldest: datetime, window: float, now: datetime) -> int:
    return math.ceil((oldest + timedelta(seconds=window) - now).total_seconds())


def check_job_creation(session: Session, key: ApiKey, settings: Settings, *, jobs: int = 1,
                       now: datetime | None = None) -> None:
    """A request of `key` that queues `jobs` jobs fits its rate limit and its quota of
    running jobs; RateLimitError if not. Call with the key locked (`lock_key`)."""
    now = now or utcnow()
    if settings.job_rate_limit is not None:
        since = now - timedelta(seconds=settings.rate_limit_window)
        count, oldest = session.execute(
            select(func.count(), func.min(Job.created_at)).where(
                Job.owner_id == key.id, Job.parent_id.is_(None), Job.created_at > since)).one()
        if count >= settings.job_rate_limit:
            raise RateLimitError(
                f"Rate limit reached for creating fine-tuning jobs: "
                f"{settings.job_rate_limit} per {settings.rate_limit_window:g} s per key "
                "(SAGETRAIN_JOB_RATE_LIMIT)",
                retry_after=_retry_after(oldest, settings.rate_limit_window, now))
    check_running_jobs(session, key, settings, jobs=jobs)


def running_jobs_quota(key: ApiKey, settings: Settings) -> int | None:
    """The most jobs `key` may have queued or running at once; None: no limit."""
    return key.max_running_jobs if key.max_running_jobs is not None \
        else settings.max_running_jobs


def check_running_jobs(session: Session, key: ApiKey, settings: Settings, *,
                       jobs: int = 1) -> None:
    """`jobs` more of the key's jobs queued (new ones, or paused ones resumed) fit its quota
    of jobs queued or running; RateLimitError if not. Call with the key locked."""
    quota = running_jobs_quota(key, settings)
    if quota is None:
        return
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.owner_id == key.id, Job.status.in_(ACTIVE), Job.sweep.is_(None))) or 0
    if active + jobs > quota:
        adding = f"{jobs} more" if jobs > 1 else "another"
        raise RateLimitError(
            f"Quota reached: this key may have {quota} fine-tuning jobs queued or running "
            f"at once (max_running_jobs); it has {active}, and this request adds {adding}",
            retry_after=QUOTA_RETRY_SECONDS, code="max_running_jobs_exceeded")


def storage_quota(key: ApiKey, settings: Settings) -> int | None:
    """The most bytes `key`'s files may take; None: no limit."""
    return key.max_storage_bytes if key.max_storage_bytes is not None \
        else settings.max_storage_bytes


def check_file_creation(session: Session, key: ApiKey, settings: Settings, *, size: int,
                        now: datetime | None = None) -> None:
    """An upload of `size` bytes by `key` fits its rate limit and its storage quota;
    RateLimitError if not. Call with the key locked (`lock_key`) before the insert."""
    now = now or utcnow()
    if settings.file_rate_limit is not None:
        since = now - timedelta(seconds=settings.rate_limit_window)
        count, oldest = session.execute(
            select(func.count(), func.min(File.created_at)).where(
                File.owner_id == key.id, File.purpose == UPLOADED,
                File.created_at > since)).one()
        if count >= settings.file_rate_limit:
            raise RateLimitError(
                f"Rate limit reached for uploading files: {settings.file_rate_limit} per "
                f"{settings.rate_limit_window:g} s per key (SAGETRAIN_FILE_RATE_LIMIT)",
                retry_after=_retry_after(oldest, settings.rate_limit_window, now))
    quota = storage_quota(key, settings)
    if quota is not None:
        used = session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(
            File.owner_id == key.id)) or 0
        if used + size > quota:
            raise RateLimitError(
                f"Quota reached: this key's files may take {format_size(quota)} "
                f"(max_storage); they take {format_size(used)}, and this file "
                f"{format_size(size)}. Delete files to make room",
                retry_after=QUOTA_RETRY_SECONDS, code="max_storage_exceeded", param="file")
