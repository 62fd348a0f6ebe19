"""Status changes are conditional: one wins, the others change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from sage_core.db import transitions as t
from sage_core.db.ids import new_id
from sage_core.db.models import ApiKey, Job, JobStatus, utcnow
from sage_core.db.recovery import reap_expired_leases
from sage_core.db.session import make_engine, make_session_factory


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


def _job(factory: sessionmaker[Session], status: str = JobStatus.QUEUED) -> str:
    with factory.begin() as s:
        key = ApiKey(id=new_id("key"), name="t", key_hash=new_id("h")[-40:], prefix="sk-st-x")
        s.add(key)
        s.flush()
        job = Job(id=new_id("ftjob"), owner_id=key.id, model="m", task="text-classification",
                  spec={}, seed=1, training_file_id="file-x", status=status,
                  queued_at=utcnow(), artifact_prefix="jobs/x")
        s.add(job)
        return job.id


def _status(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_claim_once(factory: sessionmaker[Session]) -> None:
    job_id = _job(factory)
    with factory.begin() as s:
        assert t.claim(s, job_id, owner="w1", lease_seconds=60)
    with factory.begin() as s:
        assert not t.claim(s, job_id, owner="w2", lease_seconds=60)
    job = _status(factory, job_id)
    assert (job.status, job.lease_owner, job.attempt) == ("running", "w1", 1)
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()


def test_late_finish_after_cancel_changes_nothing(factory: sessionmaker[Session]) -> None:
    job_id = _job(factory)
    with factory.begin() as s:
        assert t.claim(s, job_id, owner="w1", lease_seconds=60)
    with factory.begin() as s:
        assert t.cancel(s, job_id)
    with factory.begin() as s:
        assert not t.succeed(s, job_id, owner="w1", fine_tuned_model="ft:x")
        assert not t.fail(s, job_id, owner="w1", error={"code": "x", "message": "y"})
        assert not t.cancel(s, job_id)
    job = _status(factory, job_id)
    assert job.status == "cancelled" and job.fine_tuned_model is None and job.finished_at


def test_only_the_lease_holder_finishes(factory: sessionmaker[Session]) -> None:
    job_id = _job(factory)
    with factory.begin() as s:
        assert t.claim(s, job_id, owner="w1", lease_seconds=60)
    # w1 goes silent; its lease expires and the job is requeued and claimed by w2
    with factory.begin() as s:
        assert reap_expired_leases(s, max_lost_leases=3,
                                   now=utcnow() + timedelta(seconds=61)) == {job_id: "queued"}
        assert t.claim(s, job_id, owner="w2", lease_seconds=60)
    with factory.begin() as s:
        assert not t.heartbeat(s, job_id, owner="w1", lease_seconds=60)
        assert not t.succeed(s, job_id, owner="w1")
        assert t.heartbeat(s, job_id, owner="w2", lease_seconds=60, step=3)
        assert t.succeed(s, job_id, owner="w2")
    job = _status(factory, job_id)
    assert (job.status, job.attempt, job.step) == ("succeeded", 2, 3)


def test_pause_and_resume(factory: sessionmaker[Session]) -> None:
    queued = _job(factory)
    with factory.begin() as s:
        assert t.request_pause(s, queued)
    assert _status(factory, queued).status == "paused"
    running = _job(factory)
    with factory.begin() as s:
        assert t.claim(s, running, owner="w", lease_seconds=60)
        assert t.request_pause(s, running)
    job = _status(factory, running)
    assert job.status == "running" and job.pause_requested
    with factory.begin() as s:
        assert t.paused(s, running, owner="w")
        assert not t.request_pause(s, running)
        assert t.resume(s, running)
        assert not t.resume(s, running)
    job = _status(factory, running)
    assert job.status == "queued" and not job.pause_requested


def test_reaping_leaves_live_leases(factory: sessionmaker[Session]) -> None:
    job_id = _job(factory)
    with factory.begin() as s:
        assert t.claim(s, job_id, owner="w", lease_seconds=60)
    with factory.begin() as s:
        assert reap_expired_leases(s, max_lost_leases=3) == {}
    assert _status(factory, job_id).status == "running"
