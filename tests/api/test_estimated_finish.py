"""A running job's estimated_finish is never in the past (issue 14: it was while the job
still ran); a finished job's is what the row holds."""

from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace

from api.schemas import _estimated_finish
from sage_core.db.models import JobStatus, utcnow


def _job(status: str, offset: float | None) -> object:
    return SimpleNamespace(status=status, estimated_finish=None if offset is None
                           else utcnow() + timedelta(seconds=offset))


def test_running_estimate_is_never_in_the_past() -> None:
    now = int(time.time())
    assert _estimated_finish(_job(JobStatus.RUNNING, -60)) >= now  # type: ignore[arg-type,operator]
    assert _estimated_finish(_job(JobStatus.RUNNING, 60)) >= now + 59  # type: ignore[arg-type,operator]
    assert _estimated_finish(_job(JobStatus.RUNNING, None)) is None  # type: ignore[arg-type]
    assert _estimated_finish(_job(JobStatus.QUEUED, -60)) < now  # type: ignore[arg-type,operator]
