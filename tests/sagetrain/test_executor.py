"""The embedded executor (sagetrain/executor.py) with stand-in job processes: a crash
fails the job, a process that never starts is given up on, a cancelled job's process that
does not stop is terminated with everything it started, and dispatch wakes the loop."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_helpers import WorkerEnv, gone

from sage_core.db import transitions
from sagetrain.executor import LocalExecutor


@pytest.fixture
def executor(env: WorkerEnv, fake_python: str) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(env.settings, poll_seconds=0.2, cancel_grace_seconds=1.0,
                       python=fake_python)
    yield ex
    ex.stop()


def _wait(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("mode", "code", "said"), [
    ("crash", "worker_crashed", "exit code 3"),  # a crashed process fails the job
    ("no-start", "worker_failed_to_start", "3 times"),  # one that never starts is given up
])
def test_a_process_that_fails_fails_the_job(env: WorkerEnv, executor: LocalExecutor,
                                            monkeypatch: pytest.MonkeyPatch, mode: str,
                                            code: str, said: str) -> None:
    monkeypatch.setenv("FAKE_MODE", mode)
    job_id = env.add_job()
    executor.start()
    _wait(lambda: env.job(job_id).status == "failed")
    error = env.job(job_id).error
    assert error is not None and error["code"] == code and said in error["message"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cancelled_job_process_is_terminated(env: WorkerEnv, executor: LocalExecutor,
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("FAKE_MODE", "hang")
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    executor.start()
    job_id = env.add_job()
    executor.dispatch(job_id)
    _wait(lambda: pidfile.exists() and env.job(job_id).status == "running")
    pid, child = int(pidfile.read_text()), int(Path(f"{pidfile}.child").read_text())
    with env.sessions.begin() as s:
        assert transitions.cancel(s, job_id)
    _wait(lambda: executor.current is None, timeout=15)
    assert gone(pid)
    _wait(lambda: gone(child), timeout=5)  # its whole process group went with it
    assert env.job(job_id).status == "cancelled"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_stop_honours_its_timeout(env: WorkerEnv, executor: LocalExecutor,
                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A job's process that ignores the request to checkpoint and stop is terminated once
    stop's timeout has passed, and stop returns soon after; the job goes back to the queue
    (it resumes from its last checkpoint), as a lost worker's would, rather than failing."""
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("FAKE_MODE", "hang")
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    job_id = env.add_job()
    executor.start()
    _wait(lambda: pidfile.exists() and env.job(job_id).status == "running")
    pid = int(pidfile.read_text())
    started = time.monotonic()
    executor.stop(timeout=1.0)
    assert time.monotonic() - started < 12
    assert gone(pid)
    job = env.job(job_id)
    assert (job.status, job.lost_leases, job.error) == ("queued", 1, None)


def test_the_executor_imports_neither_the_worker_nor_torch() -> None:
    # In a fresh process: this suite imports worker/ and torch elsewhere.
    code = """
import sys
import sagetrain.executor
loaded = [m for m in sys.modules if m.split(".")[0] in ("worker", "torch", "celery")]
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_gets_as_many_slots_as_it_asks_for(env: WorkerEnv, fake_python: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("FAKE_MODE", "record")
    monkeypatch.setenv("FAKE_PIDFILE", str(tmp_path / "env"))
    settings = env.settings.model_copy(update={"worker_slots": 2})
    ex = LocalExecutor(settings, poll_seconds=0.2, python=fake_python)
    job_id = env.add_job(gpus=2)
    ex.start()
    try:
        _wait(lambda: env.job(job_id).status == "succeeded")
    finally:
        ex.stop()
    assert (tmp_path / "env").read_text() == "0,1;-"  # two process slots, no GPU list


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_bigger_than_the_executor_waits_then_fails(env: WorkerEnv, fake_python: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """It is told once, the jobs behind it run, and it fails after gpu_wait_seconds."""
    monkeypatch.setenv("FAKE_MODE", "record")
    monkeypatch.setenv("FAKE_PIDFILE", str(tmp_path / "env"))
    settings = env.settings.model_copy(update={"gpu_wait_seconds": 1.5})
    ex = LocalExecutor(settings, poll_seconds=0.2, python=fake_python)
    big, small = env.add_job(gpus=2), env.add_job()
    ex.start()
    try:
        _wait(lambda: env.job(big).status == "failed")
        _wait(lambda: env.job(small).status == "succeeded")
    finally:
        ex.stop()
    error = env.job(big).error
    assert error is not None and error["code"] == "insufficient_gpus"
    assert "asks for 2 GPUs, but the largest live worker has 1" in error["message"]
    assert len([e for e in env.events(big) if e.startswith("Waiting for a worker")]) == 1
