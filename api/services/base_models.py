"""The model a job starts from: a base model from the catalog, or, as OpenAI allows, one of
the key's own fine-tuned models ("ft:..."), trained further on the same task."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import InvalidRequestError
from sage_core.catalog import resolve_model
from sage_core.db.models import ApiKey, Job, JobStatus
from sage_core.errors import UnknownModelError
from sage_core.settings import Settings

FINE_TUNED_PREFIX = "ft:"


def check_base_model(session: Session, key: ApiKey, name: str, settings: Settings, *,
                     task: str | None = None) -> None:
    """Raise a 400 unless `name` is in the catalog or is the fine-tuned model of a
    succeeded job of `key`; for the latter, `task` (when given) must be that job's task.
    Another key's fine-tuned model is unknown, as it is on /v1/models."""
    if not name.startswith(FINE_TUNED_PREFIX):
        resolve_model(name, settings)
        return
    parent_task = session.scalar(
        select(Job.task).where(Job.owner_id == key.id, Job.fine_tuned_model == name,
                               Job.status == JobStatus.SUCCEEDED).limit(1))
    if parent_task is None:
        raise UnknownModelError(
            f"unknown model {name!r}: not a fine-tuned model of this API key "
            "(GET /v1/models lists the models a job may start from)", param="model")
    if task is not None and task != parent_task:
        raise InvalidRequestError(
            f"task {task!r} differs from {parent_task!r}, the task {name} was fine-tuned "
            f"for; a fine-tuned model trains further on its own task", param="task")
