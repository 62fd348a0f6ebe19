"""Webhook endpoints and the deliveries queued for them when a job ends.

`enqueue_job_ended` runs in the transaction that moved the job to succeeded, failed or
cancelled (`sage_core.db.transitions`, `sage_core.db.recovery`), so an event is queued if and
only if the status change commits. Sending is `sage_core.webhooks.deliver_due`.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sage_core.db.ids import new_id
from sage_core.db.models import Job, JobStatus, WebhookDelivery, WebhookEndpoint, utcnow

ENDPOINT, MESSAGE = "wh", "msg"
EVENT_PREFIX = "fine_tuning.job."
JOB_EVENTS = tuple(f"{EVENT_PREFIX}{s}" for s in
                   (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED))
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def new_secret() -> str:
    """`whsec_` and 32 random bytes in base64: the Standard Webhooks secret format."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def create_endpoint(session: Session, owner_id: str, url: str,
                    events: list[str] | None = None) -> WebhookEndpoint:
    row = WebhookEndpoint(id=new_id(ENDPOINT), owner_id=owner_id, url=url,
                          secret=new_secret(), events=list(events or JOB_EVENTS),
                          disabled=False, created_at=utcnow())
    session.add(row)
    return row


def enqueue_job_ended(session: Session, job_id: str) -> int:
    """Queue one delivery per live endpoint of the job's owner that wants the job's final
    status. Reads the row from the database (the caller's UPDATE bypassed the session).
    Returns how many were queued."""
    found = session.execute(
        select(Job.owner_id, Job.status, Job.fine_tuned_model, Job.error)
        .where(Job.id == job_id)).one_or_none()
    if found is None or found.status not in JobStatus.FINAL:
        return 0
    event = f"{EVENT_PREFIX}{found.status}"
    endpoints = session.scalars(select(WebhookEndpoint).where(
        WebhookEndpoint.owner_id == found.owner_id, WebhookEndpoint.disabled.is_(False))).all()
    now = utcnow()
    payload: dict[str, Any] = {
        "type": event,
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "data": {"id": job_id, "object": "fine_tuning.job", "status": found.status,
                 "fine_tuned_model": found.fine_tuned_model, "error": found.error},
    }
    queued = 0
    for endpoint in endpoints:
        if event not in endpoint.events:
            continue
        session.add(WebhookDelivery(
            id=new_id(MESSAGE), endpoint_id=endpoint.id, job_id=job_id, event_type=event,
            payload=payload, status=PENDING, attempts=0, next_attempt_at=now, created_at=now))
        queued += 1
    return queued
