"""What the Celery task adds to the supervision of a job's process: duplicates start no
process, a shutdown re-sends, a process that never claimed raises."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from worker_helpers import WorkerEnv

from sage_core import supervision
from sage_core.db import transitions
from sage_core.supervision import JobSupervisor, Settled, Shutdown
from worker.supervisor import GpuSlots, supervise

OWNER = "celery:h:1:x"


class Ended(JobSupervisor):
    """Settles as if the job's process had exited with `returncode`, without starting one."""

    def __init__(self, env: WorkerEnv, returncode: int):
        super().__init__(env.settings, env.sessions, kind="celery", shutdown=Shutdown())
        self.returncode = returncode

    def run(self, job_id: str, *, env: Any = None, output: Any = None) -> Settled | None:
        return self.settle(job_id, OWNER, self.returncode)


def _claimed(env: WorkerEnv, owner: str = OWNER) -> str:
    job_id = env.add_job()
    with env.sessions.begin() as s:
        assert transitions.claim(s, job_id, owner=owner, lease_seconds=60)
    return job_id


def test_a_job_that_is_not_queued_starts_no_process(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a process was started")

    monkeypatch.setattr(supervision.subprocess, "Popen", no_process)
    job_id = _claimed(env)
    supervisor = JobSupervisor(env.settings, env.sessions, kind="celery", shutdown=Shutdown(),
                               python=sys.executable)
    assert supervise(job_id, supervisor, gpus=GpuSlots([]), send_again=no_process) is None


def test_a_job_requeued_by_shutdown_is_sent_again(env: WorkerEnv) -> None:
    job_id = _claimed(env)
    with env.sessions.begin() as s:
        assert transitions.requeue(s, job_id, owner=OWNER)
    sent: list[str] = []
    assert supervise(job_id, Ended(env, 0), gpus=GpuSlots([]), send_again=sent.append) == "queued"
    assert sent == [job_id]


def test_a_transient_exit_is_not_sent_again_at_once(env: WorkerEnv) -> None:
    job_id = _claimed(env)
    sent: list[str] = []
    assert supervise(job_id, Ended(env, 75), gpus=GpuSlots([]), send_again=sent.append) == "queued"
    assert sent == []  # the reaper sends it after redispatch_after: a backoff


def test_a_process_that_never_claimed_raises(env: WorkerEnv) -> None:
    job_id = env.add_job()
    with pytest.raises(RuntimeError, match="without running it"):
        supervise(job_id, Ended(env, 1), gpus=GpuSlots([]), send_again=lambda job_id: None)
    assert env.job(job_id).status == "queued"


def test_gpu_slots_hand_out_each_gpu_once() -> None:
    slots = GpuSlots(["0", "1"])
    with slots.take() as a, slots.take() as b, slots.take() as none:
        assert {a, b} == {"0", "1"} and none is None
    with slots.take() as again:
        assert again in {"0", "1"}
