"""The embedded default's job executor: queued jobs run one at a time, each in its own
child process (`python -m worker run JOB_ID`), supervised by `sage_core.supervision` as a
Celery worker's are (cancel grace, crash and start-failure policy, the child dying with
this process). The executor knows jobs only by id: it imports neither the worker nor torch.

- `dispatch(job_id)` (the API's hook after it commits a job) wakes the loop; the loop also
  polls, so jobs queued by anything else (a resume, a restart) run too.
- Each round first queues again the running jobs whose lease expired (a server that died
  mid-job: they resume from their last checkpoint), then runs queued jobs, oldest first,
  until none is left. Each job's output goes to `DATA_DIR/logs/JOB_ID.log`.
- Multi-GPU jobs: the executor holds the slots a Celery worker would (SAGETRAIN_WORKER_GPUS,
  else SAGETRAIN_WORKER_SLOTS processes, default 1: `sage_core.slots`), and still runs one
  job at a time: a job asking for N takes the first N (CUDA_VISIBLE_DEVICES on GPUs). It is
  the only worker there is, so a job asking for more than it holds is skipped, told so once,
  and fails after `gpu_wait_seconds`, as under Celery (`sage_core.db.placement`).
- `stop(timeout)` asks a running job to checkpoint and go back to the queue (SIGTERM),
  waits up to `timeout` seconds for it, then terminates it.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sage_core.db import placement
from sage_core.db.models import Job, JobStatus
from sage_core.db.recovery import reap_expired_leases
from sage_core.db.session import make_engine, make_session_factory
from sage_core.periodic import PeriodicThread
from sage_core.settings import Settings
from sage_core.slots import worker_slots
from sage_core.supervision import KILL_AFTER_TERM_SECONDS, JobSupervisor, Shutdown, signal_group

log = logging.getLogger("sagetrain.executor")


class LocalExecutor:
    def __init__(self, settings: Settings, *, poll_seconds: float = 2.0,
                 cancel_grace_seconds: float | None = None, python: str = sys.executable):
        self.settings = settings
        self._engine = make_engine(settings.resolved_database_url,
                                   lock_retry_seconds=settings.database_lock_retry_seconds)
        self.sessions: sessionmaker[Session] = make_session_factory(self._engine)
        self._shutdown = Shutdown()
        self.supervisor = JobSupervisor(settings, self.sessions, kind="local",
                                        shutdown=self._shutdown, python=python,
                                        cancel_grace_seconds=cancel_grace_seconds)
        self._thread = PeriodicThread("sagetrain-executor", self.run_queued, poll_seconds)
        self.logs_dir = settings.data_dir.resolve() / "logs"
        self.slots = worker_slots(settings)

    @property
    def current(self) -> subprocess.Popen[bytes] | None:
        """The running job's process, if any."""
        return next(iter(self.supervisor.processes.values()), None)

    # --- the Dispatcher protocol -------------------------------------------------------------

    def dispatch(self, job_id: str) -> None:
        self._thread.wake()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._thread.wake()  # the first round now: jobs left queued by the last run

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; ask a running child to checkpoint and requeue its job (SIGTERM),
        and wait for it up to `timeout` seconds before terminating it."""
        self._shutdown.request(timeout)
        if not self._thread.stop(timeout + 2 * KILL_AFTER_TERM_SECONDS):
            log.warning("executor: a job's process outlived the shutdown; giving up on it")
        self._engine.dispose()

    def running_jobs(self) -> list[str]:
        return list(self.supervisor.processes)

    def kill_jobs(self) -> None:
        for proc in list(self.supervisor.processes.values()):
            signal_group(proc, signal.SIGKILL)

    # --- one round ----------------------------------------------------------------------------

    def run_queued(self) -> None:
        while not self._shutdown.is_set() and (next_job := self._next_job()) is not None:
            job_id, gpus = next_job
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            with (self.logs_dir / f"{job_id}.log").open("ab") as output, \
                    self.slots.take(gpus) as taken:
                assert taken is not None  # one job at a time: every slot is free
                self.supervisor.run(job_id, env=self.slots.env(taken), output=output)

    def _next_job(self) -> tuple[str, int] | None:
        """The oldest queued job that fits, and its size."""
        with self.sessions.begin() as s:
            reap_expired_leases(s, max_lost_leases=self.settings.max_lost_leases)
            placement.hold_oversized(s, largest=len(self.slots),
                                     wait_seconds=self.settings.gpu_wait_seconds)
            row = s.execute(select(Job.id, placement.job_size).where(
                Job.status == JobStatus.QUEUED, placement.job_size <= len(self.slots))
                .order_by(Job.queued_at, Job.id).limit(1)).first()
            return None if row is None else (row[0], row[1])
