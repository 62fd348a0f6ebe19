"""Jobs of lost workers: back to the queue, or failed after `max_lost_leases` losses; the
reaper sends requeued and long-waiting jobs again, skipping those with a message waiting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from sage_core.db import transitions as t
from sage_core.db.ids import new_id
from sage_core.db.models import ApiKey, Job, JobEvent, JobStatus, utcnow
from sage_core.db.recovery import reap_expired_leases, release_lost_job, waiting_jobs
from sage_core.db.session import make_engine, make_session_factory
from sage_core.reaper import Reaper
from sage_core.settings import Settings

LATER = timedelta(seconds=61)


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


def _running_job(factory: sessionmaker[Session], owner: str = "w1") -> str:
    with factory.begin() as s:
        key = ApiKey(id=new_id("key"), name="t", key_hash=new_id("h")[-40:], prefix="sk-st-x")
        s.add(key)
        s.flush()
        job = Job(id=new_id("ftjob"), owner_id=key.id, model="m", task="text-classification",
                  spec={}, seed=1, training_file_id="file-x", status=JobStatus.QUEUED,
                  queued_at=utcnow(), artifact_prefix="jobs/x")
        s.add(job)
        s.flush()
        assert t.claim(s, job.id, owner=owner, lease_seconds=60)
        return job.id


def _job(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _events(factory: sessionmaker[Session], job_id: str) -> list[str]:
    with factory() as s:
        return list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))


def test_expired_leases_requeue_then_fail_at_the_limit(factory: sessionmaker[Session]) -> None:
    job_id = _running_job(factory)
    live = _running_job(factory, owner="w2")
    with factory.begin() as s:
        s.execute(update(Job).where(Job.id == live).values(
            lease_expires_at=utcnow() + LATER * 2))
    for loss in (1, 2):
        with factory.begin() as s:
            moved = reap_expired_leases(s, max_lost_leases=3, now=utcnow() + LATER)
        assert moved == {job_id: "queued"}
        job = _job(factory, job_id)
        assert (job.status, job.lost_leases, job.error) == ("queued", loss, None)
        with factory.begin() as s:
            assert t.claim(s, job_id, owner=f"w{loss + 2}", lease_seconds=60)
    with factory.begin() as s:
        assert reap_expired_leases(s, max_lost_leases=3, now=utcnow() + LATER) == {
            job_id: "failed"}
    job = _job(factory, job_id)
    assert (job.status, job.lost_leases, job.attempt) == ("failed", 3, 3)
    assert job.error is not None and job.error["code"] == "worker_lost"
    assert "lost its worker 3 times" in job.error["message"]
    assert job.finished_at is not None
    assert _job(factory, live).status == "running"  # its lease is alive
    events = _events(factory, job_id)
    assert sum(e.startswith("Worker lost (no heartbeat)") for e in events) == 2
    assert any(e.startswith("Fine-tuning job failed: the job lost its worker") for e in events)


def test_release_needs_the_lease_holder(factory: sessionmaker[Session]) -> None:
    job_id = _running_job(factory)
    with factory.begin() as s:
        assert release_lost_job(s, job_id, owner="someone-else", reason="x",
                                max_lost_leases=3) is None
        assert release_lost_job(s, job_id, owner="w1", reason="database unreachable",
                                max_lost_leases=3) == "queued"
    with factory.begin() as s:  # already moved: a second reaper changes nothing
        assert release_lost_job(s, job_id, reason="x", max_lost_leases=3) is None
    assert _job(factory, job_id).lost_leases == 1


def test_reaper_sends_requeued_and_unsent_waiting_jobs(factory: sessionmaker[Session],
                                                       db_url: str, tmp_path: Path) -> None:
    expired, waiting, marked = (_running_job(factory) for _ in range(3))
    old = utcnow() - timedelta(seconds=120)
    with factory.begin() as s:
        s.execute(update(Job).where(Job.id == expired).values(lease_expires_at=old))
        s.execute(update(Job).where(Job.id.in_([waiting, marked])).values(
            status=JobStatus.QUEUED, queued_at=old))
    settings = Settings(data_dir=tmp_path, database_url=db_url, redispatch_after=60)
    sent: list[str] = []
    reaper = Reaper(settings, sent.append, is_dispatched=lambda job_id: job_id == marked)
    assert sorted(reaper.run_once()) == sorted([expired, waiting])
    assert sorted(sent) == sorted([expired, waiting])
    with factory() as s:
        assert set(waiting_jobs(s, queued_before=utcnow())) == {expired, waiting, marked}
