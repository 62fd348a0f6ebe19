"""PostgreSQL keeps the number of queued jobs in job_queue_counts (migration 0006), through a
trigger on jobs, whatever changes a job's status; a new job's queue position is read from it.
SQLite has no such table: it counts, as it always did."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import empty_postgres
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from sage_core.db import transitions as t
from sage_core.db.ids import new_id
from sage_core.db.keys import create_key
from sage_core.db.migrate import downgrade, table_names, upgrade
from sage_core.db.models import ApiKey, Job, utcnow
from sage_core.db.recovery import reap_expired_leases
from sage_core.db.session import make_engine, make_session_factory
from sage_core.settings import Settings

JOBS = "/v1/fine_tuning/jobs"
TRAIN = b"".join(b'{"text": "%s", "label": "%s"}\n' % pair for pair in [
    (b"win cash now", b"spam"), (b"see you later", b"ham"), (b"free prize", b"spam"),
    (b"ok fine", b"ham")])


class _Dispatcher:
    def dispatch(self, job_id: str) -> None:
        pass


class _Api:
    def __init__(self, client: TestClient, key: str):
        self.client, self.headers = client, {"Authorization": f"Bearer {key}"}

    def upload(self, name: str = "train.jsonl") -> str:
        got = self.client.post("/v1/files", headers=self.headers, files={"file": (name, TRAIN)},
                               data={"purpose": "fine-tune"})
        assert got.status_code == 200, got.text
        return str(got.json()["id"])

    def post(self, path: str, **body: object) -> dict:
        got = self.client.post(path, headers=self.headers, json=body)
        assert got.status_code == 200, got.text
        return dict(got.json())

    def create(self, training_file: str) -> dict:
        return self.post(JOBS, model="tiny-bert", training_file=training_file)

    def position(self, job_id: str) -> int | None:
        """GET's position: the correlated count over queued jobs that creation used to run."""
        got = self.client.get(f"{JOBS}/{job_id}", headers=self.headers)
        assert got.status_code == 200, got.text
        return got.json()["queue_position"]  # type: ignore[no-any-return]


@pytest.fixture
def pg_url(migrated_postgres_url: str) -> str:
    empty_postgres(migrated_postgres_url)  # TRUNCATE: the counter must read zero after it
    return migrated_postgres_url


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def api(pg_url: str, tmp_path: Path, models_dir: Path,
        factory: sessionmaker[Session]) -> Iterator[_Api]:
    settings = Settings(data_dir=tmp_path / "data", database_url=pg_url, models_dir=models_dir)
    with factory.begin() as s:
        _, key = create_key(s, "queue-counts")
    with TestClient(create_app(settings, dispatcher=_Dispatcher())) as client:
        yield _Api(client, key)


def _counted(engine: Engine) -> tuple[int, int]:
    """(the counter's sum, the real number of queued jobs), read in one snapshot."""
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT (SELECT coalesce(sum(queued), 0) FROM job_queue_counts),"
            " (SELECT count(*) FROM jobs WHERE status = 'queued')")).one()
    return int(row[0]), int(row[1])


def _consistent(engine: Engine) -> int:
    counter, real = _counted(engine)
    assert counter == real, f"job_queue_counts says {counter}, jobs hold {real} queued"
    return real


def test_counter_follows_every_path_in_and_out_of_the_queue(
        api: _Api, engine: Engine, factory: sessionmaker[Session]) -> None:
    assert _consistent(engine) == 0  # emptied by TRUNCATE before the test
    file_id = api.upload()
    ids = []
    for _ in range(6):
        ids.append(api.create(file_id)["id"])
        _consistent(engine)
    assert _consistent(engine) == 6
    api.post(f"{JOBS}/{ids[0]}/cancel")
    assert _consistent(engine) == 5
    api.post(f"{JOBS}/{ids[1]}/pause")
    assert _consistent(engine) == 4
    api.post(f"{JOBS}/{ids[1]}/resume")
    assert _consistent(engine) == 5
    with factory.begin() as s:  # dispatched to two workers
        assert t.claim(s, ids[2], owner="w1", lease_seconds=60)
        assert t.claim(s, ids[3], owner="w2", lease_seconds=60)
    assert _consistent(engine) == 3
    with factory.begin() as s:  # w1 told to shut down, w2 vanishes and its job is reaped
        assert t.requeue(s, ids[2], owner="w1")
        assert reap_expired_leases(s, max_lost_leases=3, now=utcnow() + timedelta(
            seconds=61)) == {ids[3]: "queued"}
    assert _consistent(engine) == 5
    with factory.begin() as s:
        assert t.claim(s, ids[4], owner="w1", lease_seconds=60)
        assert t.succeed(s, ids[4], owner="w1")
    assert _consistent(engine) == 4
    with factory.begin() as s:
        s.delete(s.get(Job, ids[5]))
    assert _consistent(engine) == 3
    with factory.begin() as s:  # a change and its undoing in one transaction
        assert t.cancel(s, ids[2])
        s.execute(text("UPDATE jobs SET status = 'queued' WHERE id = :id"), {"id": ids[2]})
    assert _consistent(engine) == 3
    parent = api.post(JOBS, model="tiny-bert", training_file=file_id,
                      validation_file=api.upload("valid.jsonl"),
                      sweep={"learning_rate": [1e-4, 3e-4]})  # two queued children
    assert parent["status"] == "running"
    assert _consistent(engine) == 5
    with engine.begin() as conn:  # every job gone with its key
        conn.execute(text("DELETE FROM api_keys"))
    assert _consistent(engine) == 0


def test_truncate_empties_the_counter(api: _Api, engine: Engine) -> None:
    file_id = api.upload()
    for _ in range(3):
        api.create(file_id)
    assert _consistent(engine) == 3
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE jobs CASCADE"))
    assert _consistent(engine) == 0
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM job_queue_counts")) == 0


def test_position_is_one_after_the_queued_jobs(api: _Api, engine: Engine) -> None:
    file_id = api.upload()
    jobs = []
    for expected in range(1, 6):
        job = api.create(file_id)
        assert job["queue_position"] == expected == api.position(job["id"])
        jobs.append(job["id"])
    for job_id in jobs[1:3]:  # two of the queued jobs ahead leave the queue
        api.post(f"{JOBS}/{job_id}/cancel")
    for expected in (4, 5):
        job = api.create(file_id)
        assert job["queue_position"] == expected == api.position(job["id"])
    assert _consistent(engine) == 5


def test_concurrent_creates_keep_the_count(api: _Api, engine: Engine,
                                           factory: sessionmaker[Session]) -> None:
    file_id = api.upload()
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def create_and_move(worker: int) -> None:
        try:
            start.wait()
            for i in range(10):
                job_id = api.create(file_id)["id"]
                if i % 3 == 0:
                    with factory.begin() as s:
                        assert t.claim(s, job_id, owner=f"w{worker}", lease_seconds=60)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=create_and_move, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _consistent(engine) == 8 * 6


def _key_with_jobs(factory: sessionmaker[Session], statuses: list[str]) -> list[str]:
    with factory.begin() as s:
        key = ApiKey(id=new_id("key"), name="t", key_hash=new_id("h")[-40:], prefix="sk-st-x")
        s.add(key)
        s.flush()
        jobs = [Job(id=new_id("ftjob"), owner_id=key.id, model="m", task="text-classification",
                    spec={}, seed=1, training_file_id="file-x", status=status,
                    queued_at=utcnow(), artifact_prefix="jobs/x") for status in statuses]
        s.add_all(jobs)
        return [job.id for job in jobs]


def test_upgrade_seeds_the_counter_from_queued_jobs(unmigrated_postgres_url: str) -> None:
    upgrade(unmigrated_postgres_url, "0005")
    engine = make_engine(unmigrated_postgres_url)
    factory = make_session_factory(engine)
    ids = _key_with_jobs(factory, ["queued"] * 4 + ["running", "paused", "cancelled"])
    upgrade(unmigrated_postgres_url)
    assert _consistent(engine) == 4
    with factory.begin() as s:
        assert t.claim(s, ids[0], owner="w", lease_seconds=60)
    assert _consistent(engine) == 3

    downgrade(unmigrated_postgres_url, "0005")
    assert "job_queue_counts" not in table_names(unmigrated_postgres_url)
    with factory.begin() as s:  # no trigger left behind to fail on the missing table
        assert t.requeue(s, ids[0], owner="w")
    upgrade(unmigrated_postgres_url)
    assert _consistent(engine) == 4
    engine.dispose()
