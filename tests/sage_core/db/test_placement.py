"""The workers registry and jobs too big for every live worker, on both backends: told once,
failed with insufficient_gpus after the wait, let be once a big enough worker is live."""

from __future__ import annotations

import time
from datetime import timedelta

from worker_helpers import WorkerEnv

from sage_core.db import placement, transitions
from sage_core.db.models import Job, utcnow
from sage_core.reaper import Reaper

WAITING = "Waiting for a worker with"


def test_the_registry_knows_live_workers_and_their_size(env: WorkerEnv) -> None:
    now = utcnow()
    with env.sessions.begin() as s:
        placement.beat(s, "w1@a", slots=1, gpus=None, now=now - timedelta(seconds=30))
        placement.beat(s, "w4@b", slots=4, gpus=["0", "1", "2", "3"],
                       now=now - timedelta(seconds=300))  # silent for longer than a lease
    with env.sessions() as s:
        assert placement.largest_live(s, lease_seconds=120, now=now) == 1
        assert [w.id for w in placement.live_workers(s, lease_seconds=120, now=now)] == ["w1@a"]
    with env.sessions.begin() as s:
        placement.beat(s, "w4@b", slots=4, gpus=["0", "1", "2", "3"], now=now)  # back
    with env.sessions() as s:
        assert placement.largest_live(s, lease_seconds=120, now=now) == 4
    with env.sessions.begin() as s:
        placement.leave(s, "w4@b")
        placement.leave(s, "w1@a")
    with env.sessions() as s:
        assert placement.largest_live(s, lease_seconds=120, now=now) is None


def test_a_job_too_big_waits_told_once_then_fails(env: WorkerEnv) -> None:
    big, small = env.add_job(gpus=3), env.add_job(gpus=2)
    start = utcnow()
    for seconds in (0, 5, 10):  # reaper rounds within the wait
        with env.sessions.begin() as s:
            assert placement.hold_oversized(s, largest=2, wait_seconds=60,
                                            now=start + timedelta(seconds=seconds)) == []
    waiting = [e for e in env.events(big) if e.startswith(WAITING)]
    assert waiting == ["Waiting for a worker with 3 GPUs: the largest live worker has 2; the "
                       "job fails if none joins within 60 s"]
    assert env.job(big).status == "queued" and env.job(big).waiting_for_gpus_since == start
    assert not [e for e in env.events(small) if e.startswith(WAITING)]
    with env.sessions.begin() as s:
        assert placement.hold_oversized(s, largest=2, wait_seconds=60,
                                        now=start + timedelta(seconds=61)) == [big]
    job = env.job(big)
    assert job.status == "failed" and job.error == {
        "code": "insufficient_gpus", "param": "resources.gpus",
        "message": "the job asks for 3 GPUs, but the largest live worker has 2; none with "
                   "enough joined in 60 s"}
    assert env.job(small).status == "queued"


def test_a_big_enough_worker_ends_the_wait(env: WorkerEnv) -> None:
    job_id = env.add_job(gpus=4)
    start = utcnow()
    with env.sessions.begin() as s:
        placement.hold_oversized(s, largest=2, wait_seconds=60, now=start)
    with env.sessions.begin() as s:
        placement.hold_oversized(s, largest=4, wait_seconds=60, now=start)
    assert env.job(job_id).waiting_for_gpus_since is None
    assert env.events(job_id)[-1] == "A worker with 4 GPUs is live; the job waits for its turn"
    with env.sessions.begin() as s:  # that worker leaves again: a new wait, not the old one
        assert placement.hold_oversized(s, largest=2, wait_seconds=60,
                                        now=start + timedelta(seconds=100)) == []
    assert env.job(job_id).status == "queued"


def test_with_no_live_worker_nothing_is_decided(env: WorkerEnv) -> None:
    job_id = env.add_job(gpus=2)
    with env.sessions.begin() as s:
        assert placement.hold_oversized(s, largest=None, wait_seconds=0.1) == []
    assert env.job(job_id).waiting_for_gpus_since is None
    assert not [e for e in env.events(job_id) if e.startswith(WAITING)]


def test_a_claimed_job_s_wait_is_over(env: WorkerEnv) -> None:
    job_id = env.add_job(gpus=2)
    start = utcnow()
    with env.sessions.begin() as s:
        placement.hold_oversized(s, largest=1, wait_seconds=60, now=start)
        assert transitions.claim(s, job_id, owner="w", lease_seconds=60)
    with env.sessions.begin() as s:
        placement.hold_oversized(s, largest=1, wait_seconds=60, now=start)
    assert env.job(job_id).waiting_for_gpus_since is None


def test_a_job_s_size_defaults_to_one(env: WorkerEnv) -> None:
    job_id = env.add_job()
    with env.sessions.begin() as s:
        assert placement.job_gpus(s, job_id) == 1
        job = s.get(Job, job_id)
        assert job is not None
        job.spec = {k: v for k, v in job.spec.items() if k != "resources"}  # an older job
    with env.sessions() as s:
        assert placement.job_gpus(s, job_id) == 1
        assert placement.job_gpus(s, "ftjob-none") is None


def test_the_reaper_holds_then_fails_a_job_too_big_for_the_live_workers(
        env: WorkerEnv) -> None:
    settings = env.settings.model_copy(update={"gpu_wait_seconds": 0.5})
    with env.sessions.begin() as s:
        placement.beat(s, "w1@a", slots=1, gpus=None)
    job_id = env.add_job(gpus=2)
    reaper = Reaper(settings, lambda job_id: None)
    reaper.run_once()
    assert env.job(job_id).status == "queued"
    time.sleep(0.6)
    with env.sessions.begin() as s:
        placement.beat(s, "w1@a", slots=1, gpus=None)
    reaper.run_once()
    job = env.job(job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "insufficient_gpus"
    assert len([e for e in env.events(job_id) if e.startswith(WAITING)]) == 1
