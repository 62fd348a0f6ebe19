"""How the API hands a queued job to whatever runs jobs: by id only, after the row that
holds it has been committed. The composition root (`sagetrain serve`) supplies the
implementation: the embedded local executor, or Celery's send_task by task name
(`sagetrain.dispatchers.CeleryDispatcher`)."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("sagetrain.api")


class Dispatcher(Protocol):
    def dispatch(self, job_id: str) -> None:
        """Make sure the queued job `job_id` will run. Must return quickly."""


class NullDispatcher:
    """Leaves jobs queued in the database for an executor that polls it."""

    def dispatch(self, job_id: str) -> None:
        log.debug("job %s queued; no dispatcher configured", job_id)
