"""The Celery app of sagetrain's workers, built from the settings (SAGETRAIN_*):
`sagetrain worker`, or `celery -A worker.celery_app worker --pool threads -Q gpu,gpu.2`
(a worker consumes the queue of each job size it holds: `sage_core.broker.worker_queues`).

The one task, `sagetrain.jobs.run(job_id)`, re-reads the job row and runs it in a child
process under the same supervision as the embedded executor's (`sage_core.supervision`,
through `worker.supervisor`); each pool thread runs one job at a time, and a job holds as many
of the worker's slots (GPUs) as it asks for, so concurrency = slots at most. The threads pool
keeps this process free of torch; the jobs' processes are where the memory goes.

From `worker_ready`, every worker also runs a reaper thread (`sage_core.reaper`, sending
with the same `CeleryDispatcher` as the API) and a registration thread that keeps its row in
the `workers` table (its slots, for placement: `sage_core.db.placement`) alive every
`heartbeat_seconds`; the row is deleted when the worker shuts down.

Only known transient errors (database, broker) are retried, with exponential backoff and
a cap; anything a job itself does wrong fails the job in the runner, never here.
"""

from __future__ import annotations

import logging
import signal
import threading
from functools import cache
from types import FrameType
from typing import Any

from celery import Task, signals

from sage_core.broker import TASK_NAME, CeleryDispatcher, create_celery
from sage_core.db.session import get_engine, make_session_factory
from sage_core.settings import get_settings
from sage_core.slots import worker_slots
from sage_core.stopping import EXIT_SLACK_SECONDS, hard_exit, stop_grace
from sage_core.supervision import JobSupervisor, Shutdown, signal_group
from sage_core.transient import is_transient
from worker.registration import Registration
from worker.supervisor import supervise

log = logging.getLogger("sagetrain.worker")
MAX_RETRIES = 8
RETRY_BACKOFF_MAX = 300.0

settings = get_settings()
app = create_celery(settings)
slots = worker_slots(settings)
shutdown = Shutdown()  # set when the worker starts its shutdown (worker_shutting_down)


@cache
def dispatcher() -> CeleryDispatcher:
    return CeleryDispatcher(settings, app)


@cache
def supervisor() -> JobSupervisor:
    return JobSupervisor(settings, make_session_factory(get_engine(settings)), kind="celery",
                         shutdown=shutdown)


@app.task(name=TASK_NAME, bind=True, max_retries=MAX_RETRIES)
def run_job(self: Task, job_id: str) -> str | None:
    """Run the job `job_id` if it is queued: by id only, the row says the rest."""
    try:
        return supervise(job_id, supervisor(), slots=slots, send_again=dispatcher().dispatch,
                         taken=dispatcher().taken)
    except Exception as exc:
        if not is_transient(exc):
            raise
        delay = min(RETRY_BACKOFF_MAX, 2.0 ** (self.request.retries + 1))
        log.warning("[%s] %s; retry %d in %.0f s", job_id, type(exc).__name__,
                    self.request.retries + 1, delay)
        raise self.retry(exc=exc, countdown=delay) from exc


@cache
def registration() -> Registration:
    return Registration(settings, slots)


@signals.worker_shutting_down.connect
def _on_shutdown(sig: str = "", **_: Any) -> None:
    # Runs in the signal handler, on the main thread. Each running job checkpoints and goes
    # back to the queue, within the deadline; whatever is left then is given up on, and a
    # second signal (which Celery would take as nothing more than the first) exits at once.
    deadline = settings.shutdown_timeout_seconds
    shutdown.request(stop_grace(deadline))
    jobs = list(supervisor().processes)
    log.info("%s: stopping; waiting up to %.0f s for %s; a second signal exits at once",
             sig or "stop", deadline, ", ".join(f"job {j} to checkpoint" for j in jobs)
             or "no job")
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, _on_second_signal)
    watchdog = threading.Timer(deadline + EXIT_SLACK_SECONDS, _give_up, args=(deadline,))
    watchdog.daemon = True
    watchdog.start()
    registration().stop()


def _kill_jobs() -> None:
    for proc in list(supervisor().processes.values()):
        signal_group(proc, signal.SIGKILL)


def _on_second_signal(sig: int, _: FrameType | None) -> None:
    log.warning("%s again: exiting now; running jobs are killed and resume from their last "
                "checkpoint", signal.Signals(sig).name)
    _kill_jobs()
    hard_exit(1)


def _give_up(deadline: float) -> None:
    log.warning("still not stopped %.0f s after the signal (jobs: %s); exiting",
                deadline + EXIT_SLACK_SECONDS, ", ".join(supervisor().processes) or "none")
    _kill_jobs()
    hard_exit(0)


@signals.worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    from sage_core.reaper import Reaper

    registration().start(str(getattr(sender, "hostname", None) or app.conf.get("hostname")))
    Reaper(settings, dispatcher().dispatch, is_dispatched=dispatcher().is_dispatched).start()
