"""A job's events and metrics as Server-Sent Events, read by polling the database.

Each poll opens a fresh short session in a worker thread, reads the job's status and then
the rows after the cursor, and closes it: no connection or transaction is held between
polls. The status is read first, so once it is final every row the job wrote before
finishing is in the same poll's reads, and the stream can end.

The SSE `id` of every message is the stream's cursor, `<event id>.<metric row id>`: the id
of the last event sent (`0` before any) and the id of the last metrics row sent (`0` before
any). A client that reconnects with `Last-Event-ID: <cursor>` gets what came after both.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime

import anyio
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.errors import InvalidRequestError
from api.schemas import EventPublic, MetricRow
from sage_core.db.models import Job, JobEvent, JobMetric, JobStatus

POLL_SECONDS = 0.5
PING_SECONDS = 15  # keep-alive comment lines, for proxies that drop idle connections
BATCH = 500  # rows of each kind per poll; a full batch is followed by another poll at once
_NONE = "0"


@dataclass(frozen=True)
class Cursor:
    """The last event (id and created_at, which events order by) and metrics row sent."""

    event_id: str | None = None
    event_created: datetime | None = None
    metric_id: int = 0

    def encode(self) -> str:
        return f"{self.event_id or _NONE}.{self.metric_id}"


def parse_cursor(session: Session, job_id: str, value: str | None) -> Cursor:
    """The cursor a `Last-Event-ID` names; 400 if it is malformed or names no event of the
    job."""
    if not value:
        return Cursor()
    event_id, _, metric = value.rpartition(".")
    # isdigit() alone passes '²' and other digits that int() refuses
    if not event_id or not (metric.isascii() and metric.isdigit()) or len(metric) > 18:
        raise InvalidRequestError(f"Malformed Last-Event-ID: '{value[:100]}'",
                                  param="Last-Event-ID")
    if event_id == _NONE:
        return Cursor(metric_id=int(metric))
    created = session.scalar(select(JobEvent.created_at).where(
        JobEvent.id == event_id, JobEvent.job_id == job_id))
    if created is None:
        raise InvalidRequestError(f"No such event to resume after: '{event_id[:100]}'",
                                  param="Last-Event-ID")
    return Cursor(event_id, created, int(metric))


def events_after(job_id: str, cursor: Cursor) -> Select[JobEvent]:
    """The job's events after the cursor, oldest first: the order /events pages in, reversed."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if cursor.event_id is not None:
        created = JobEvent.created_at
        stmt = stmt.where(or_(created > cursor.event_created, and_(
            created == cursor.event_created, JobEvent.id > cursor.event_id)))
    return stmt.order_by(JobEvent.created_at, JobEvent.id)


@dataclass
class Poll:
    status: str | None  # None: the job is gone
    events: list[JobEvent]
    metrics: list[JobMetric]

    @property
    def full(self) -> bool:
        return len(self.events) == BATCH or len(self.metrics) == BATCH


def poll(session_factory: Callable[[], Session], job_id: str, cursor: Cursor) -> Poll:
    with session_factory() as session, session.begin():
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        events = list(session.scalars(events_after(job_id, cursor).limit(BATCH)))
        metrics = list(session.scalars(
            select(JobMetric).where(JobMetric.job_id == job_id, JobMetric.id > cursor.metric_id)
            .order_by(JobMetric.id).limit(BATCH)))
        session.expunge_all()
    return Poll(status, events, metrics)


def messages(found: Poll, cursor: Cursor) -> tuple[list[ServerSentEvent], Cursor]:
    """The poll's rows as SSE messages, events and metrics merged by creation time, each
    with the cursor that resumes after it."""
    rows: list[JobEvent | JobMetric] = [*found.events, *found.metrics]
    rows.sort(key=lambda row: row.created_at)
    out = []
    for row in rows:
        if isinstance(row, JobEvent):
            cursor = replace(cursor, event_id=row.id, event_created=row.created_at)
            data, name = EventPublic.from_row(row).model_dump_json(), "event"
        else:
            cursor = replace(cursor, metric_id=row.id)
            data, name = MetricRow.from_row(row).model_dump_json(), "metrics"
        out.append(ServerSentEvent(data=data, event=name, id=cursor.encode()))
    return out, cursor


async def job_stream(session_factory: Callable[[], Session], job_id: str,
                     cursor: Cursor) -> AsyncIterator[ServerSentEvent]:
    """Rows as they are written, then `end` with the final status (or null if the job is
    gone). A client disconnect cancels this generator at its next await."""
    while True:
        found = await run_in_threadpool(poll, session_factory, job_id, cursor)
        batch, cursor = messages(found, cursor)
        for message in batch:
            yield message
        if found.full:
            continue
        if found.status is None or found.status in JobStatus.FINAL:
            yield ServerSentEvent(data=json.dumps({"status": found.status}), event="end",
                                  id=cursor.encode())
            return
        await anyio.sleep(POLL_SECONDS)

