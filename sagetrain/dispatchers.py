"""How `sagetrain serve` hands jobs to whatever runs them, chosen from the settings:

- `celery` (SAGETRAIN_BROKER_URL set): `send_task("sagetrain.jobs.run", [job_id])` by name
  to the Celery workers, plus a reaper thread that recovers jobs of dead workers and
  re-sends jobs whose message was lost. Imports neither worker/ nor torch.
- `local`: the embedded executor (`sagetrain.executor`), one child process per job.
- `none`: jobs stay queued for something else to run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sage_core.broker import CeleryDispatcher
from sage_core.settings import Settings

log = logging.getLogger("sagetrain.dispatch")
EXECUTORS = ("auto", "celery", "local", "none")
__all__ = ["JobRunning", "build_job_running", "resolve_executor"]


@dataclass
class JobRunning:
    """What serve starts next to the API: a dispatcher and the threads behind it."""

    dispatcher: Any = None
    services: list[Any] = field(default_factory=list)  # each has start() and stop()

    def start(self) -> None:
        for service in self.services:
            service.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every service, each waiting up to about `timeout` seconds (a running job's
        checkpoint)."""
        for service in reversed(self.services):
            service.stop(timeout)
        close = getattr(self.dispatcher, "close", None)
        if close is not None:
            close()

    def running_jobs(self) -> list[str]:
        """The ids of the jobs whose processes run here (the embedded executor's)."""
        return [job_id for service in self.services
                for job_id in getattr(service, "running_jobs", list)()]

    def kill_jobs(self) -> None:
        """Kill the jobs' processes now (a second Ctrl-C): they resume from their last
        checkpoint once their leases expire."""
        for service in self.services:
            getattr(service, "kill_jobs", lambda: None)()


def resolve_executor(choice: str, settings: Settings) -> str:
    """`auto` is celery when a broker is configured, else local. Asking for celery with no
    broker, or local with one (two runners would race for the same jobs), is an error."""
    if choice not in EXECUTORS:
        raise ValueError(f"Invalid executor: {choice!r}")
    if choice == "auto":
        return "celery" if settings.broker_url else "local"
    if choice == "celery" and not settings.broker_url:
        raise ValueError("--executor celery needs SAGETRAIN_BROKER_URL (redis://host:6379/0)")
    if choice == "local" and settings.broker_url:
        raise ValueError("SAGETRAIN_BROKER_URL is set, so Celery workers run the jobs; use "
                         "--executor celery (or auto), or unset the broker URL")
    return choice


def build_job_running(choice: str, settings: Settings) -> JobRunning:
    kind = resolve_executor(choice, settings)
    if kind == "celery":
        from sage_core.reaper import Reaper

        celery = CeleryDispatcher(settings)
        reaper = Reaper(settings, celery.dispatch, is_dispatched=celery.is_dispatched)
        log.info("jobs go to Celery workers on queue %r", settings.task_queue)
        return JobRunning(celery, [reaper])
    if kind == "local":
        from sagetrain.executor import LocalExecutor

        executor = LocalExecutor(settings)
        return JobRunning(executor, [executor])
    return JobRunning(None, [])
