"""The embedded default's job executor: queued jobs run one at a time, each in its own
child process (`python -m worker run JOB_ID`).

A child process means a crash, an out-of-memory kill or a cancel never takes the server
down, and the memory a job used goes back to the system when it ends. The executor knows
jobs only by id, as a Celery worker would: it imports neither the worker nor torch.

- `dispatch(job_id)` (the API's hook after it commits a job) wakes the loop; the loop also
  polls, so jobs queued by anything else (a resume, a restart) run too.
- While a child runs, the executor watches its job: once it is cancelled the child stops by
  itself within about a second (the runner polls the row); if it has not exited after
  `cancel_grace_seconds` it is terminated, then killed.
- A child that exits and leaves its job `running` crashed: the job fails with
  `worker_crashed`. Running jobs whose lease expired (a server that died mid-job) are
  queued again and resume from their last checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sage_core.db import transitions
from sage_core.db.events import add_event
from sage_core.db.models import Job, JobStatus
from sage_core.db.recovery import reap_expired_leases, release_lost_job
from sage_core.db.session import make_engine, make_session_factory
from sage_core.settings import Settings
from sage_core.transient import EXIT_TRANSIENT

log = logging.getLogger("sagetrain.executor")
_JOB_ID = re.compile(r"^ftjob-[0-9a-z]{1,40}$")
MAX_START_FAILURES = 3


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment for a job's process: this one's, plus every setting made explicit
    (absolute paths), so the child sees the same database and store whatever its cwd."""
    env = dict(os.environ)
    values = settings.model_dump()
    values["data_dir"] = settings.data_dir.resolve()
    values["database_url"] = settings.resolved_database_url
    values["artifacts_dir"] = settings.resolved_artifacts_dir
    for name, value in values.items():
        if value is None:
            env.pop(f"SAGETRAIN_{name.upper()}", None)
        else:
            env[f"SAGETRAIN_{name.upper()}"] = str(Path(value).resolve()) if isinstance(
                value, Path) else str(value)
    return env


class LocalExecutor:
    def __init__(self, settings: Settings, *, poll_seconds: float = 2.0,
                 cancel_grace_seconds: float = 10.0, python: str = sys.executable):
        self.settings = settings
        self.poll_seconds, self.cancel_grace_seconds = poll_seconds, cancel_grace_seconds
        self.python = python
        self._engine = make_engine(settings.resolved_database_url)
        self.sessions: sessionmaker[Session] = make_session_factory(self._engine)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_failures: dict[str, int] = {}
        self.current: subprocess.Popen[bytes] | None = None
        self.logs_dir = settings.data_dir.resolve() / "logs"

    # --- the Dispatcher protocol -------------------------------------------------------------

    def dispatch(self, job_id: str) -> None:
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sagetrain-executor",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; ask a running child to checkpoint and requeue its job (SIGTERM),
        and wait for it up to `timeout` seconds before killing it."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 10)
        self._engine.dispose()

    # --- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job_id = self._next_job()
            except Exception:
                log.exception("executor: cannot read the queue")
                job_id = None
            if job_id is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            try:
                self._run_child(job_id)
            except Exception:
                log.exception("executor: job %s", job_id)
                time.sleep(self.poll_seconds)

    def _next_job(self) -> str | None:
        with self.sessions.begin() as s:
            reap_expired_leases(s, max_lost_leases=self.settings.max_lost_leases)
            return s.scalar(select(Job.id).where(Job.status == JobStatus.QUEUED)
                            .order_by(Job.queued_at, Job.id).limit(1))

    def _run_child(self, job_id: str) -> None:
        if not _JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        owner = f"local:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with (self.logs_dir / f"{job_id}.log").open("ab") as logfile:
            log.info("executor: starting job %s", job_id)
            proc = subprocess.Popen(
                [self.python, "-m", "worker", "run", job_id, "--worker-id", owner],
                env=child_environment(self.settings), stdout=logfile,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.current = proc
            try:
                self._watch(proc, job_id)
            finally:
                self.current = None
        self._after_exit(job_id, owner, proc.returncode)

    def _watch(self, proc: subprocess.Popen[bytes], job_id: str) -> None:
        stop_since: float | None = None
        signalled = False
        while proc.poll() is None:
            time.sleep(0.5)
            if self._stopping.is_set() and not signalled:
                proc.send_signal(signal.SIGTERM)  # the runner checkpoints and requeues
                signalled, stop_since = True, time.monotonic()
            if stop_since is None and self._status(job_id) in JobStatus.FINAL:
                stop_since = time.monotonic()  # cancelled: the runner is stopping by itself
            if stop_since is not None:
                waited = time.monotonic() - stop_since
                grace = self.cancel_grace_seconds
                if waited > grace and proc.poll() is None:
                    log.warning("executor: job %s did not stop in %.0f s; terminating",
                                job_id, grace)
                    if waited < grace + 5:
                        proc.terminate()
                    else:
                        proc.kill()

    def _status(self, job_id: str) -> str | None:
        with self.sessions() as s:
            return s.scalar(select(Job.status).where(Job.id == job_id))

    def _after_exit(self, job_id: str, owner: str, returncode: int | None) -> None:
        with self.sessions.begin() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            if (job.status == JobStatus.RUNNING and job.lease_owner == owner
                    and returncode == EXIT_TRANSIENT):
                release_lost_job(s, job_id, owner=owner, reason="database unreachable",
                                 max_lost_leases=self.settings.max_lost_leases)
            elif job.status == JobStatus.RUNNING and job.lease_owner == owner:
                message = f"the job's process exited unexpectedly (exit code {returncode})"
                if transitions.fail(s, job_id, owner=owner, error={
                        "code": "worker_crashed", "message": message, "param": None}):
                    add_event(s, job_id, f"Fine-tuning job failed: {message}", level="error")
            elif job.status == JobStatus.QUEUED and job.lease_owner != owner:
                # The child never claimed it: it could not start. Do not retry forever.
                failures = self._start_failures.get(job_id, 0) + 1
                self._start_failures[job_id] = failures
                if failures >= MAX_START_FAILURES and transitions.fail(
                        s, job_id, allowed=(JobStatus.QUEUED,), error={
                            "code": "worker_failed_to_start", "param": None,
                            "message": f"the job's process failed to start {failures} times "
                                       f"(exit code {returncode}); see the server logs"}):
                    add_event(s, job_id, "Fine-tuning job failed: its process did not start",
                              level="error")
        log.info("executor: job %s process exited with %s", job_id, returncode)
