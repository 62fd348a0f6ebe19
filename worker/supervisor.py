"""What the Celery task does with a job: run it in a child process and watch it.

The task's thread (in the Celery worker's process, which never imports torch) starts
`python -m worker run JOB_ID`, the same child the embedded executor starts, and waits:

- A child is a fresh process per job: an out-of-memory kill or a crash in a kernel takes
  down the job only, and its GPU memory goes back to the system when it ends.
- The child asks the kernel to kill it when this process dies (`--parent-pid`,
  PR_SET_PDEATHSIG), so a SIGKILLed worker leaves no training behind on its GPU; the job's
  lease then expires and the reaper puts it back in the queue, to resume elsewhere.
- Cancelled: the child stops by itself at the next step; if it is still there after
  `cancel_grace_seconds`, its process group is terminated, then killed.
- Worker shutdown (SIGTERM: a deploy, `docker stop`): the child is told to stop; it saves a
  checkpoint and puts the job back in the queue, and this sends the job again at once so
  that another worker continues it.
- The child exited leaving its job `running` under its lease: a transient error (exit 75)
  puts the job back in the queue (the reaper sends it after `redispatch_after`, a backoff;
  at most `max_lost_leases` times); any other exit is a crash and fails the job.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sage_core.db import transitions
from sage_core.db.events import add_event
from sage_core.db.models import Job, JobStatus
from sage_core.db.recovery import release_lost_job
from sage_core.db.session import get_engine, make_session_factory
from sage_core.settings import Settings
from sage_core.transient import EXIT_TRANSIENT

log = logging.getLogger("sagetrain.worker")
S = JobStatus
POLL_SECONDS = 0.5
KILL_AFTER_TERM_SECONDS = 5.0

# Set when the Celery worker starts its shutdown (worker_shutting_down signal).
shutting_down = threading.Event()


class GpuSlots:
    """Hands each concurrent job one of the worker's GPUs (CUDA_VISIBLE_DEVICES)."""

    def __init__(self, gpus: list[str]):
        self._free = list(gpus)
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[str | None]:
        with self._lock:
            gpu = self._free.pop(0) if self._free else None
        try:
            yield gpu
        finally:
            if gpu is not None:
                with self._lock:
                    self._free.append(gpu)


def parse_gpus(value: str | None) -> list[str]:
    return [g.strip() for g in (value or "").split(",") if g.strip()]


def job_status(sessions: sessionmaker[Session], job_id: str) -> str | None:
    with sessions() as s:
        return s.scalar(select(Job.status).where(Job.id == job_id))


def supervise(job_id: str, settings: Settings, *, gpus: GpuSlots,
              send_again: Callable[[str], None]) -> str | None:
    """Run the job in a child process if it is queued. Returns its status afterwards, or
    None if it was not queued (a duplicate message, a cancelled or paused job)."""
    sessions = make_session_factory(get_engine(settings))
    status = job_status(sessions, job_id)
    if status != S.QUEUED:
        # Saves starting a process for a duplicate; the child's claim is what decides.
        log.info("[%s] is %s, not queued: nothing to do", job_id, status)
        return None
    owner = f"celery:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    with gpus.take() as gpu:
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("[%s] starting its process%s", job_id, f" on GPU {gpu}" if gpu else "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", job_id, "--worker-id", owner,
             "--parent-pid", str(os.getpid())],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            _watch(proc, job_id, sessions, settings)
        finally:
            if proc.poll() is None:  # this thread is being torn down: leave nothing behind
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
    return _after_exit(job_id, owner, proc.returncode, sessions, settings, send_again)


def _watch(proc: subprocess.Popen[bytes], job_id: str, sessions: sessionmaker[Session],
           settings: Settings) -> None:
    stop_since: float | None = None
    grace = settings.cancel_grace_seconds
    terminated = False
    while proc.poll() is None:
        time.sleep(POLL_SECONDS)
        if stop_since is None and shutting_down.is_set():
            log.info("[%s] worker shutting down: asking the job to checkpoint and stop", job_id)
            proc.send_signal(signal.SIGTERM)  # the runner checkpoints and requeues
            stop_since, grace = time.monotonic(), max(grace, settings.lease_seconds)
        if stop_since is None and job_status(sessions, job_id) in S.FINAL:
            stop_since = time.monotonic()  # cancelled: the runner stops by itself
        if stop_since is not None and proc.poll() is None:
            waited = time.monotonic() - stop_since
            if waited > grace and not terminated:
                log.warning("[%s] did not stop in %.0f s; terminating its process", job_id, grace)
                _kill_group(proc, signal.SIGTERM)
                terminated = True
            elif waited > grace + KILL_AFTER_TERM_SECONDS:
                _kill_group(proc, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the child and anything it started (its own session, so its own group)."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _after_exit(job_id: str, owner: str, code: int | None, sessions: sessionmaker[Session],
                settings: Settings, send_again: Callable[[str], None]) -> str | None:
    with sessions.begin() as s:
        job = s.get(Job, job_id)
        if job is None:
            return None
        held = job.lease_owner == owner  # the child claimed it, and nobody took it over
        if job.status == S.RUNNING and held:
            if code == EXIT_TRANSIENT:
                release_lost_job(s, job_id, owner=owner, reason="database or broker unreachable",
                                 max_lost_leases=settings.max_lost_leases)
            else:
                how = f"killed by signal {-code}" if code is not None and code < 0 else (
                    f"exit code {code}")
                message = f"the job's process exited unexpectedly ({how})"
                if code == -signal.SIGKILL:
                    message += "; it may have run out of memory"
                if transitions.fail(s, job_id, owner=owner, error={
                        "code": "worker_crashed", "message": message, "param": None}):
                    add_event(s, job_id, f"Fine-tuning job failed: {message}", level="error")
        status = s.scalar(select(Job.status).where(Job.id == job_id))
    log.info("[%s] process exited with %s; job is %s", job_id, code, status)
    if held and code == 0 and status == S.QUEUED:
        send_again(job_id)  # shut down mid-job: let another worker continue it now
    elif not held and code != 0:
        # It could not start (or claim): the job is not at fault. It stays queued and the
        # reaper sends it again later, maybe to a healthier worker.
        raise RuntimeError(f"the process for job {job_id} exited with {code} without "
                           "running it; see the worker log")
    return status
