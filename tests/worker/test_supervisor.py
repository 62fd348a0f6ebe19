"""What the Celery task does around a job's process, without starting one: duplicates are
skipped, a transient failure requeues (counted), a crash fails, a shutdown re-sends; and the
runner turns a database outage into a transient exit instead of failing the job."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from worker_helpers import WorkerEnv

from sage_core.db import transitions
from sage_core.transient import EXIT_TRANSIENT, TransientJobError
from worker import supervisor
from worker.runner import JobRunner, run_job
from worker.supervisor import GpuSlots, supervise


def _claimed(env: WorkerEnv, owner: str = "celery:h:1:x") -> str:
    job_id = env.add_job()
    with env.sessions.begin() as s:
        assert transitions.claim(s, job_id, owner=owner, lease_seconds=60)
    return job_id


def test_a_job_that_is_not_queued_starts_no_process(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a process was started")

    monkeypatch.setattr(supervisor.subprocess, "Popen", no_process)
    job_id = _claimed(env)
    assert supervise(job_id, env.settings, gpus=GpuSlots([]), send_again=no_process) is None


def test_transient_exit_requeues_and_counts(env: WorkerEnv) -> None:
    job_id = _claimed(env)
    sent: list[str] = []
    status = supervisor._after_exit(job_id, "celery:h:1:x", EXIT_TRANSIENT, env.sessions,
                                    env.settings, sent.append)
    job = env.job(job_id)
    assert (status, job.status, job.lost_leases) == ("queued", "queued", 1)
    assert sent == []  # the reaper sends it after redispatch_after: a backoff


def test_a_crashed_process_fails_the_job(env: WorkerEnv) -> None:
    job_id = _claimed(env)
    supervisor._after_exit(job_id, "celery:h:1:x", -signal.SIGKILL, env.sessions,
                           env.settings, lambda job_id: None)
    error = env.job(job_id).error
    assert error is not None and error["code"] == "worker_crashed"
    assert "signal 9" in error["message"] and "out of memory" in error["message"]


def test_a_job_requeued_by_shutdown_is_sent_again(env: WorkerEnv) -> None:
    job_id = _claimed(env)
    with env.sessions.begin() as s:
        assert transitions.requeue(s, job_id, owner="celery:h:1:x")
    sent: list[str] = []
    supervisor._after_exit(job_id, "celery:h:1:x", 0, env.sessions, env.settings, sent.append)
    assert sent == [job_id]


def test_a_process_that_never_claimed_raises(env: WorkerEnv) -> None:
    job_id = env.add_job()
    with pytest.raises(RuntimeError, match="without running it"):
        supervisor._after_exit(job_id, "celery:h:1:x", 1, env.sessions, env.settings,
                               lambda job_id: None)
    assert env.job(job_id).status == "queued"


def test_gpu_slots_hand_out_each_gpu_once() -> None:
    slots = GpuSlots(["0", "1"])
    with slots.take() as a, slots.take() as b, slots.take() as none:
        assert {a, b} == {"0", "1"} and none is None
    with slots.take() as again:
        assert again in {"0", "1"}


def test_runner_leaves_a_job_to_retry_on_a_database_outage(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    def outage(self: JobRunner, row: dict[str, Any]) -> None:
        raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(JobRunner, "_on_metrics", outage)
    job_id = env.add_job()
    with pytest.raises(TransientJobError):
        run_job(job_id, env.settings, worker_id="w1")
    job = env.job(job_id)
    assert (job.status, job.lease_owner, job.error) == ("running", "w1", None)


def test_out_of_memory_fails_with_a_clear_error(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    class OutOfMemoryError(RuntimeError):
        pass

    def oom(self: JobRunner, row: dict[str, Any]) -> None:
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(JobRunner, "_on_metrics", oom)
    job_id = env.add_job()
    assert run_job(job_id, env.settings) == "failed"
    error = env.job(job_id).error
    assert error is not None and error["code"] == "out_of_memory"
    assert "smaller batch_size" in error["message"]
