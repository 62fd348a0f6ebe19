"""A job's event log (the API's /events): lines written by the API and the worker."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from sage_core.db.ids import EVENT, new_id
from sage_core.db.models import JobEvent

LEVELS = {"debug": "info", "info": "info", "warn": "warn", "warning": "warn", "error": "error",
          "critical": "error"}
log = logging.getLogger("sagetrain.jobs")


def add_event(session: Session, job_id: str, message: str, *, level: str = "info",
              type: str = "message", data: dict[str, Any] | None = None) -> JobEvent:
    """Add an event row in the caller's transaction, and log it with the job id."""
    level = LEVELS.get(level.lower(), "info")
    log.log(logging.WARNING if level != "info" else logging.INFO, "[%s] %s", job_id, message)
    row = JobEvent(id=new_id(EVENT), job_id=job_id, level=level, type=type, message=message,
                   data=data)
    session.add(row)
    return row
