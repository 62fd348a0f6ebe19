"""What the Celery task adds to the supervision of a job's process: duplicates start no
process, a shutdown re-sends, a process that never claimed raises; a job takes as many slots
as it asks for, and goes back to the broker when it does not fit."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from worker_helpers import WorkerEnv

from sage_core import supervision
from sage_core.db import transitions
from sage_core.slots import Slots
from sage_core.supervision import JobSupervisor, Settled, Shutdown
from worker.supervisor import supervise

OWNER = "celery:h:1:x"
ONE = Slots(["0"], gpus=False)


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
    assert supervise(job_id, supervisor, slots=ONE, send_again=no_process) is None


def test_a_job_requeued_by_shutdown_is_sent_again(env: WorkerEnv) -> None:
    job_id = _claimed(env)
    with env.sessions.begin() as s:
        assert transitions.requeue(s, job_id, owner=OWNER)
    sent: list[str] = []
    assert supervise(job_id, Ended(env, 0), slots=ONE,
                     send_again=lambda job_id, gpus: sent.append(job_id)) == "queued"
    assert sent == [job_id]


def test_a_transient_exit_is_not_sent_again_at_once(env: WorkerEnv) -> None:
    job_id = _claimed(env)
    sent: list[str] = []
    assert supervise(job_id, Ended(env, 75), slots=ONE,
                     send_again=lambda job_id, gpus: sent.append(job_id)) == "queued"
    assert sent == []  # the reaper sends it after redispatch_after: a backoff


def test_a_process_that_never_claimed_raises(env: WorkerEnv) -> None:
    job_id = env.add_job()
    with pytest.raises(RuntimeError, match="without running it"):
        supervise(job_id, Ended(env, 1), slots=ONE, send_again=lambda job_id, gpus: None)
    assert env.job(job_id).status == "queued"


class Recorded(JobSupervisor):
    """Records the environment it would start the job's process with, and starts none."""

    def __init__(self, env: WorkerEnv):
        super().__init__(env.settings, env.sessions, kind="celery", shutdown=Shutdown())
        self.envs: list[dict[str, str]] = []

    def run(self, job_id: str, *, env: Any = None, output: Any = None) -> Settled | None:
        self.envs.append(dict(env or {}))
        return None


def test_a_job_gets_all_the_gpus_it_asks_for(env: WorkerEnv) -> None:
    supervisor = Recorded(env)
    slots = Slots(["4", "5", "6"], gpus=True)
    job_id = env.add_job(gpus=2)
    marks_cleared: list[str] = []
    supervise(job_id, supervisor, slots=slots, send_again=no_send, taken=marks_cleared.append)
    assert supervisor.envs == [{"CUDA_VISIBLE_DEVICES": "4,5", "SAGETRAIN_JOB_SLOTS": "4,5"}]
    assert marks_cleared == [job_id]


def test_a_job_that_does_not_fit_now_goes_back_unclaimed(env: WorkerEnv) -> None:
    supervisor = Recorded(env)
    slots = Slots(["0", "1"], gpus=False)
    job_id = env.add_job(gpus=2)
    sent: list[tuple[str, int]] = []
    marks_cleared: list[str] = []
    with slots.take(1):  # another job holds one of the two
        assert supervise(job_id, supervisor, slots=slots,
                         send_again=lambda j, g: sent.append((j, g)),
                         taken=marks_cleared.append, place_wait_seconds=0.2) is None
    assert sent == [(job_id, 2)] and supervisor.envs == []
    # Still marked sent while it waited: the reaper added no duplicate meanwhile.
    assert marks_cleared == []
    assert env.job(job_id).status == "queued"


def test_a_job_bigger_than_the_worker_is_sent_on_to_its_queue(env: WorkerEnv) -> None:
    supervisor = Recorded(env)
    job_id = env.add_job(gpus=3)
    sent: list[tuple[str, int]] = []
    assert supervise(job_id, supervisor, slots=Slots(["0", "1"], gpus=True),
                     send_again=lambda j, g: sent.append((j, g))) is None
    assert sent == [(job_id, 3)] and supervisor.envs == []


def no_send(job_id: str, gpus: int) -> None:
    raise AssertionError(f"{job_id} was sent again")
