"""A job's event log (the API's /events): lines written by the API and the worker."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Insert, Table, insert
from sqlalchemy.orm import Session

from sage_core.db.ids import EVENT, new_id
from sage_core.db.models import JobEvent, utcnow

LEVELS = {"debug": "info", "info": "info", "warn": "warn", "warning": "warn", "error": "error",
          "critical": "error"}
log = logging.getLogger("sagetrain.jobs")


@dataclass(frozen=True)
class EventValues:
    """An event row's values, for a Core INSERT (see `insert_event`)."""

    id: str
    job_id: str
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any] | None = None

    def params(self) -> dict[str, Any]:
        return {"id": self.id, "job_id": self.job_id, "created_at": self.created_at,
                "level": self.level, "type": self.type, "message": self.message,
                "data": self.data}


def new_event(job_id: str, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None,
              created_at: datetime | None = None) -> EventValues:
    """An event row's values with a new id; the caller inserts it, then calls `log_event`."""
    return EventValues(new_id(EVENT), job_id, created_at or utcnow(),
                       LEVELS.get(level.lower(), "info"), type, message, data)


@cache
def insert_event() -> Insert:
    """INSERT INTO job_events (a Core INSERT), with `EventValues.params()` as its
    parameters."""
    return insert(cast(Table, JobEvent.__table__))


def log_event(event: EventValues) -> None:
    log.log(logging.WARNING if event.level != "info" else logging.INFO, "[%s] %s",
            event.job_id, event.message)


def add_event(session: Session, job_id: str, message: str, *, level: str = "info",
              type: str = "message", data: dict[str, Any] | None = None) -> JobEvent:
    """Add an event row in the caller's transaction, and log it with the job id."""
    level = LEVELS.get(level.lower(), "info")
    log.log(logging.WARNING if level != "info" else logging.INFO, "[%s] %s", job_id, message)
    row = JobEvent(id=new_id(EVENT), job_id=job_id, level=level, type=type, message=message,
                   data=data)
    session.add(row)
    return row
