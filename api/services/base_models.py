"""The model a job starts from: a base model from the catalog, or, as OpenAI allows, one of
the key's own fine-tuned models ("ft:..."), trained further on the same task."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import InvalidRequestError
from sage_core.catalog import check_fits_task, local_config, resolve_model
from sage_core.db.models import ApiKey, Job, JobStatus
from sage_core.errors import UnknownModelError
from sage_core.settings import Settings

FINE_TUNED_PREFIX = "ft:"


def check_base_model(session: Session, key: ApiKey, name: str, settings: Settings, *,
                     task: str, architecture: str) -> None:
    """Raise a 400 unless `name` is in the catalog, and can train `task` as far as its
    config shows (`check_fits_task`; hub models are checked when the job starts), or is the
    fine-tuned model of a succeeded job of `key` for `task`. Another key's fine-tuned model
    is unknown, as it is on /v1/models."""
    if not name.startswith(FINE_TUNED_PREFIX):
        config = local_config(resolve_model(name, settings))
        if config is not None:
            check_fits_task(config, name, task, architecture)
        return
    parent_task = session.scalar(
        select(Job.task).where(Job.owner_id == key.id, Job.fine_tuned_model == name,
                               Job.status == JobStatus.SUCCEEDED).limit(1))
    if parent_task is None:
        raise UnknownModelError(
            f"unknown model {name!r}: not a fine-tuned model of this API key "
            "(GET /v1/models lists the models a job may start from)", param="model")
    if task != parent_task:
        raise InvalidRequestError(
            f"task {task!r} differs from {parent_task!r}, the task {name} was fine-tuned "
            f"for; a fine-tuned model trains further on its own task", param="task")
