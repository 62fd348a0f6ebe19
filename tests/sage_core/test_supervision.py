"""The one supervision path of both executors (sage_core/supervision.py), with stand-in job
processes: the child's command line and process group, the end of a job's process settled
(a transient exit requeues, a crash fails with the signal or exit code, start failures are
tried again up to a limit), and a shutdown that asks, then terminates, on time."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from worker_helpers import WorkerEnv, gone

from sage_core.db import transitions
from sage_core.supervision import (
    MAX_START_FAILURES,
    JobSupervisor,
    Shutdown,
    child_command,
    crash_message,
)
from sage_core.transient import EXIT_TRANSIENT

OWNER = "celery:h:1:x"


def _supervisor(env: WorkerEnv, python: str = "python", kind: str = "celery",
                shutdown: Shutdown | None = None) -> JobSupervisor:
    return JobSupervisor(env.settings, env.sessions, kind=kind, python=python,
                         shutdown=shutdown or Shutdown(), cancel_grace_seconds=1.0)


def _claimed(env: WorkerEnv, owner: str = OWNER) -> str:
    job_id = env.add_job()
    with env.sessions.begin() as s:
        assert transitions.claim(s, job_id, owner=owner, lease_seconds=60)
    return job_id


def test_the_child_dies_with_this_process() -> None:
    command = child_command("/usr/bin/python3", "ftjob-abc", "local:h:1:x")
    assert command == ["/usr/bin/python3", "-m", "worker", "run", "ftjob-abc",
                       "--worker-id", "local:h:1:x", "--parent-pid", str(os.getpid())]


def test_crash_messages_name_the_signal_or_the_exit_code() -> None:
    assert crash_message(3).endswith("(exit code 3)")
    assert crash_message(-signal.SIGSEGV).endswith("(killed by signal 11)")
    assert crash_message(-signal.SIGKILL).endswith(
        "(killed by signal 9); it may have run out of memory")


def test_transient_exit_requeues_and_counts(env: WorkerEnv) -> None:
    job_id = _claimed(env)
    settled = _supervisor(env).settle(job_id, OWNER, EXIT_TRANSIENT)
    job = env.job(job_id)
    assert (settled.status, job.status, job.lost_leases) == ("queued", "queued", 1)
    assert settled.claimed and not settled.start_failed


def test_a_crashed_process_fails_the_job(env: WorkerEnv) -> None:
    job_id = _claimed(env)
    _supervisor(env).settle(job_id, OWNER, -signal.SIGKILL)
    error = env.job(job_id).error
    assert error is not None and error["code"] == "worker_crashed"
    assert "signal 9" in error["message"] and "out of memory" in error["message"]


def test_start_failures_are_tried_again_then_fail_the_job(env: WorkerEnv) -> None:
    job_id = env.add_job()
    supervisor = _supervisor(env, kind="local")
    for _ in range(MAX_START_FAILURES - 1):
        settled = supervisor.settle(job_id, "local:h:1:x", 1)
        assert settled.start_failed and settled.status == "queued"
    settled = supervisor.settle(job_id, "local:h:1:x", 1)
    error = env.job(job_id).error
    assert settled.status == "failed" and error is not None
    assert error["code"] == "worker_failed_to_start" and "server logs" in error["message"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_shutdown_asks_then_terminates_the_whole_group_on_time(
        env: WorkerEnv, fake_python: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("FAKE_MODE", "hang")  # ignores SIGTERM, has a child of its own
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    shutdown = Shutdown()
    supervisor = _supervisor(env, python=fake_python, shutdown=shutdown)
    job_id = env.add_job()
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(supervisor.run(job_id)))
    thread.start()
    deadline = time.monotonic() + 30
    while not pidfile.exists():
        assert time.monotonic() < deadline, "the job's process did not start"
        time.sleep(0.1)
    pid, child = int(pidfile.read_text()), int(Path(f"{pidfile}.child").read_text())
    assert os.getsid(pid) == pid  # a session, so a process group, of its own
    started = time.monotonic()
    shutdown.request(grace=0.5)
    thread.join(15)
    assert not thread.is_alive() and time.monotonic() - started < 12
    assert gone(pid)
    deadline = time.monotonic() + 5
    while not gone(child):
        assert time.monotonic() < deadline, "the job's process's child outlived it"
        time.sleep(0.1)
    (settled,) = outcome
    assert settled is not None and settled.returncode == -signal.SIGKILL
    assert supervisor.run(env.add_job()) is None  # no new process once shutting down
