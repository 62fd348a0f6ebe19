"""A job of 2 "GPUs" (2 ranks, gloo on the CPU) through the runner: it succeeds like a
one-process job; cancel, shutdown (SIGTERM) and the death of one rank end every rank, and
no rank outlives the job."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from test_runner import act_at_step
from worker_helpers import WorkerEnv

from sage_core.db import transitions
from sage_core.db.models import Job
from sage_core.supervision import JobSupervisor, Shutdown
from sage_core.transient import TransientJobError
from worker import runner
from worker.runner import JobRunner, run_job


def add_two_rank_job(env: WorkerEnv) -> str:
    job_id = env.add_job()
    spec = env.job(job_id).spec
    with env.sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            spec={**spec, "resources": {"gpus": 2, "strategy": "ddp"}}))
    return job_id


_BEFORE: set[int] = set()  # children this process had before the test (other fixtures')


@pytest.fixture(autouse=True)
def _children_before() -> Iterator[None]:
    _BEFORE.clear()
    _BEFORE.update(p.pid for p in psutil.Process().children(recursive=True))
    yield


def ranks() -> list[psutil.Process]:
    """This process's live children started during the test (the ranks of a job it runs),
    but for the resource tracker that multiprocessing starts once per process and keeps."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if (child.pid not in _BEFORE and child.status() != psutil.STATUS_ZOMBIE
                    and "resource_tracker" not in " ".join(child.cmdline())):
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def assert_no_rank_left() -> None:
    deadline = time.monotonic() + 10
    while ranks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ranks() == []


def test_two_rank_job_succeeds(env: WorkerEnv) -> None:
    job_id = add_two_rank_job(env)
    assert run_job(job_id, env.settings, worker_id="w1") == "succeeded"
    job = env.job(job_id)
    assert (job.step, job.total_steps) == (8, 8) and job.sensitivity is not None
    assert "Checkpoint saved at step 8" in env.events(job_id)
    assert_no_rank_left()


@pytest.mark.parametrize("how", ["cancel", "shutdown"])
def test_cancel_and_shutdown_stop_every_rank(how: str, env: WorkerEnv,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = add_two_rank_job(env)

    def stop(r: JobRunner) -> None:
        assert len(ranks()) == 2
        if how == "cancel":
            with r.sessions.begin() as s:
                assert transitions.cancel(s, job_id)
        else:  # what the SIGTERM handler does
            runner.shutdown_requested.set()

    act_at_step(monkeypatch, 2, stop)
    try:
        status = run_job(job_id, env.settings, worker_id="w1")
    finally:
        runner.shutdown_requested.clear()
    if how == "cancel":
        assert status == "cancelled"
        assert env.events(job_id)[-1] == "Training stopped at step 3 after cancel"
    else:
        assert status == "queued" and env.job(job_id).step == 3
    assert_no_rank_left()


def test_a_killed_rank_fails_the_job_and_ends_the_others(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = add_two_rank_job(env)

    def kill_one_rank(r: JobRunner) -> None:
        # the ranks set RANK after they start, out of sight of /proc: the later one
        os.kill(max(p.pid for p in ranks()), signal.SIGKILL)

    act_at_step(monkeypatch, 2, kill_one_rank)
    assert run_job(job_id, env.settings, worker_id="w1") == "failed"
    error = env.job(job_id).error
    assert error is not None and error["code"] == "worker_crashed"
    assert re.match(r"rank [01] of 2 was killed by signal SIGKILL", error["message"]), error
    assert_no_rank_left()


def test_a_database_outage_in_a_callback_leaves_the_job_to_retry(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    def outage(self: JobRunner, row: dict[str, object]) -> None:
        raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(JobRunner, "_on_metrics", outage)
    job_id = add_two_rank_job(env)
    with pytest.raises(TransientJobError):
        run_job(job_id, env.settings, worker_id="w1")
    job = env.job(job_id)
    assert (job.status, job.lease_owner, job.error) == ("running", "w1", None)
    assert_no_rank_left()


def test_a_two_rank_job_through_its_own_process(env: WorkerEnv) -> None:
    """The real path: the supervisor starts `python -m worker run`, which starts the ranks."""
    job_id = add_two_rank_job(env)
    supervisor = JobSupervisor(env.settings, env.sessions, kind="local", shutdown=Shutdown(),
                               python=sys.executable)
    settled = supervisor.run(job_id)
    assert settled is not None and (settled.returncode, settled.status) == (0, "succeeded")
    assert env.job(job_id).step == 8
    assert_no_rank_left()
