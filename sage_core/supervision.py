"""Running a job in a process of its own and seeing it to an end: the one supervision path of
both executors, the embedded one (`sagetrain.executor`) and the Celery task
(`worker.supervisor`). It knows the job's process only as a command line, so it imports
neither the worker nor torch.

- Spawn: `python -m worker run JOB_ID --worker-id OWNER --parent-pid PID`, in a session (so a
  process group) of its own, with every setting in its environment. A fresh process per job
  means an out-of-memory kill or a crash in a kernel takes down the job only, and its memory
  goes back to the system when it ends. The child asks the kernel to kill it when the thread
  that started it dies (`--parent-pid`, PR_SET_PDEATHSIG): a supervisor that is SIGKILLed
  leaves no training behind, and the job's lease expires, so it is queued again and resumes
  from its last checkpoint. Spawn from a thread that lives as long as the child.
- Watch: cancelled, the child stops by itself at its next step; after `cancel_grace_seconds`
  its process group is terminated, then killed `KILL_AFTER_TERM_SECONDS` later. Shutdown
  (`Shutdown.request(grace)`: a deploy, `docker stop`, Ctrl-C on `sagetrain serve`): the
  child is sent SIGTERM, saves a checkpoint and puts its job back in the queue; it has `grace`
  seconds to, then its group is terminated, then killed (its job then goes back to the queue,
  as a lost worker's, and resumes from its last checkpoint). No new child starts after that.
- Settle: the child exited leaving its job `running` under its lease. A transient error
  (exit 75: the database or broker unreachable) puts the job back in the queue, counted as a
  lost worker (at most `max_lost_leases` times); any other exit is a crash and fails the job
  with `worker_crashed`, naming the signal or the exit code.
- Start failures: a child that exits with an error without having claimed its job could
  not start (a broken environment, the database unreachable at the claim): not the job's
  fault, so the job stays queued for another try. After `MAX_START_FAILURES` of them under
  one supervisor the job fails with `worker_failed_to_start`, so that it does not wait
  forever, unseen, on a process that cannot start.
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
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sage_core.db import transitions
from sage_core.db.events import add_event
from sage_core.db.models import Job, JobStatus
from sage_core.db.recovery import release_lost_job
from sage_core.settings import Settings
from sage_core.transient import EXIT_TRANSIENT

log = logging.getLogger("sagetrain.supervision")
S = JobStatus
WATCH_SECONDS = 0.5
KILL_AFTER_TERM_SECONDS = 5.0
MAX_START_FAILURES = 3
LOGS = {"local": "the server logs", "celery": "the worker logs"}  # by kind of supervisor
_JOB_ID = re.compile(r"^ftjob-[0-9a-z]{1,40}$")


class Shutdown:
    """Set once, when the supervising process stops: each job's process is asked to checkpoint
    and stop, and has `grace` seconds to before it is terminated."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.grace = 0.0

    def request(self, grace: float) -> None:
        self.grace = grace
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class Settled:
    """How a job's process ended, and its job's status afterwards."""

    job_id: str
    owner: str
    returncode: int | None
    status: str | None
    claimed: bool  # the process claimed the job, and nobody took it over since
    start_failed: bool  # it exited with an error without claiming the job


def child_environment(settings: Settings, extra: Mapping[str, str] | None = None
                      ) -> dict[str, str]:
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
    env.update(extra or {})
    return env


def owner_id(kind: str) -> str:
    """The lease owner a job's process claims under: who supervises it, where, and a random
    part so that two attempts under one supervisor differ."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def child_command(python: str, job_id: str, owner: str) -> list[str]:
    return [python, "-m", "worker", "run", job_id, "--worker-id", owner,
            "--parent-pid", str(os.getpid())]


def crash_message(returncode: int | None) -> str:
    how = (f"killed by signal {-returncode}" if returncode is not None and returncode < 0
           else f"exit code {returncode}")
    message = f"the job's process exited unexpectedly ({how})"
    if returncode == -signal.SIGKILL:
        message += "; it may have run out of memory"
    return message


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the job's process and anything it started (its own session, so its own group)."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


class JobSupervisor:
    """Runs jobs by id, each in its own process, and settles how each ended. One per
    executor; `run` may be called from several threads at once (Celery's pool)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], *, kind: str,
                 shutdown: Shutdown, python: str = sys.executable,
                 cancel_grace_seconds: float | None = None):
        self.settings, self.sessions, self.kind, self.shutdown = settings, sessions, kind, shutdown
        self.python = python
        self.cancel_grace_seconds = (settings.cancel_grace_seconds if cancel_grace_seconds is None
                                     else cancel_grace_seconds)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}  # job id -> its process
        self._start_failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def run(self, job_id: str, *, env: Mapping[str, str] | None = None,
            output: IO[bytes] | None = None) -> Settled | None:
        """Run the job in a child process if it is queued, and settle its end. Returns None
        if it was not queued (a duplicate message, a cancelled or paused job) or this
        supervisor is shutting down. `env` is added to the child's environment; its output
        goes to `output` (stdout and stderr together), else to this process's."""
        if not _JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        if self.shutdown.is_set():
            log.info("[%s] not started: shutting down", job_id)
            return None
        status = self.job_status(job_id)
        if status != S.QUEUED:
            # Saves starting a process for a duplicate; the child's claim is what decides.
            log.info("[%s] is %s, not queued: nothing to do", job_id, status)
            return None
        owner = owner_id(self.kind)
        log.info("[%s] starting its process%s", job_id, "".join(
            f" with {k}={v}" for k, v in (env or {}).items()))
        proc = subprocess.Popen(
            child_command(self.python, job_id, owner), env=child_environment(self.settings, env),
            stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT if output is not None else None, start_new_session=True)
        with self._lock:
            self.processes[job_id] = proc
        try:
            self._watch(proc, job_id)
        finally:
            if proc.poll() is None:  # this thread is being torn down: leave nothing behind
                signal_group(proc, signal.SIGKILL)
                proc.wait()
            with self._lock:
                self.processes.pop(job_id, None)
        return self.settle(job_id, owner, proc.returncode)

    def job_status(self, job_id: str) -> str | None:
        with self.sessions() as s:
            return s.scalar(select(Job.status).where(Job.id == job_id))

    def _watch(self, proc: subprocess.Popen[bytes], job_id: str) -> None:
        stop_since: float | None = None
        grace = self.cancel_grace_seconds
        terminated = False
        while proc.poll() is None:
            time.sleep(WATCH_SECONDS)
            if stop_since is None and self.shutdown.is_set():
                log.info("[%s] shutting down: asking the job to checkpoint and stop", job_id)
                proc.send_signal(signal.SIGTERM)  # the runner checkpoints and requeues
                stop_since, grace = time.monotonic(), self.shutdown.grace
            if stop_since is None and self._cancelled(job_id):
                stop_since = time.monotonic()  # the runner stops by itself
            if stop_since is None or proc.poll() is not None:
                continue
            waited = time.monotonic() - stop_since
            if waited > grace and not terminated:
                log.warning("[%s] did not stop in %.0f s; terminating its process", job_id, grace)
                signal_group(proc, signal.SIGTERM)
                terminated = True
            elif waited > grace + KILL_AFTER_TERM_SECONDS:
                signal_group(proc, signal.SIGKILL)

    def _cancelled(self, job_id: str) -> bool:
        try:
            return self.job_status(job_id) in S.FINAL
        except Exception:  # the database is down: the runner notices too; keep watching
            log.warning("[%s] cannot read the job's status", job_id, exc_info=True)
            return False

    def settle(self, job_id: str, owner: str, returncode: int | None) -> Settled:
        """Put the job where its process's end says, if the process left it `running`."""
        start_failed = False
        with self.sessions.begin() as s:
            job = s.get(Job, job_id)
            if job is None:
                return Settled(job_id, owner, returncode, None, False, False)
            claimed = job.lease_owner == owner
            if job.status == S.RUNNING and claimed:
                self._settle_running(s, job_id, owner, returncode)
            elif not claimed and returncode != 0:
                start_failed = True
                self._start_failed(s, job, returncode)
            status = s.scalar(select(Job.status).where(Job.id == job_id))
        if not start_failed:
            with self._lock:
                self._start_failures.pop(job_id, None)
        log.info("[%s] process exited with %s; job is %s", job_id, returncode, status)
        return Settled(job_id, owner, returncode, status, claimed, start_failed)

    def _settle_running(self, s: Session, job_id: str, owner: str,
                        returncode: int | None) -> None:
        if returncode == EXIT_TRANSIENT:
            unreachable = "database or broker" if self.settings.broker_url else "database"
            release_lost_job(s, job_id, owner=owner, reason=f"{unreachable} unreachable",
                             max_lost_leases=self.settings.max_lost_leases)
            return
        if self.shutdown.is_set() and returncode in (-signal.SIGTERM, -signal.SIGKILL):
            # Stopped by us, late: not the job's fault; it resumes from its last checkpoint.
            release_lost_job(s, job_id, owner=owner, reason="it did not stop in time at "
                             "shutdown", max_lost_leases=self.settings.max_lost_leases)
            return
        message = crash_message(returncode)
        if transitions.fail(s, job_id, owner=owner, error={
                "code": "worker_crashed", "message": message, "param": None}):
            add_event(s, job_id, f"Fine-tuning job failed: {message}", level="error")

    def _start_failed(self, s: Session, job: Job, returncode: int | None) -> None:
        with self._lock:
            failures = self._start_failures.get(job.id, 0) + 1
            self._start_failures[job.id] = failures
        log.warning("[%s] its process exited with %s without running it (%d of %d tries)",
                    job.id, returncode, failures, MAX_START_FAILURES)
        if job.status != S.QUEUED or failures < MAX_START_FAILURES:
            return
        if transitions.fail(s, job.id, allowed=(S.QUEUED,), error={
                "code": "worker_failed_to_start", "param": None,
                "message": f"the job's process failed to start {failures} times "
                           f"(exit code {returncode}); see {LOGS.get(self.kind, 'its logs')}"}):
            add_event(s, job.id, "Fine-tuning job failed: its process did not start",
                      level="error")
