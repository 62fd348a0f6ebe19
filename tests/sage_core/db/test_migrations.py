"""The migrations build the models' schema, and go down and up again, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect, text

from sage_core.db import transitions
from sage_core.db.ids import new_id
from sage_core.db.migrate import downgrade, table_names, upgrade
from sage_core.db.models import ApiKey, Base, Job, utcnow
from sage_core.db.session import make_engine, make_session_factory

TABLES = {"api_keys", "files", "jobs", "job_events", "job_metrics", "checkpoints"}
# Migration 0006's counter of queued jobs (PostgreSQL only), dropped by 0007.
QUEUE_COUNTS = "job_queue_counts"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("unmigrated_postgres_url")  # not the shared database


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    upgrade(empty_url)
    assert table_names(empty_url) >= TABLES
    downgrade(empty_url, "base")
    assert not (TABLES | {QUEUE_COUNTS}) & table_names(empty_url)
    upgrade(empty_url)
    assert table_names(empty_url) >= TABLES
    assert QUEUE_COUNTS not in table_names(empty_url)

    engine = make_engine(empty_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def _queued_counter(engine: Engine) -> tuple[int, int]:
    """(job_queue_counts' sum, the jobs queued), read in one snapshot."""
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT (SELECT coalesce(sum(queued), 0) FROM job_queue_counts),"
            " (SELECT count(*) FROM jobs WHERE status = 'queued')")).one()
    return int(row[0]), int(row[1])


def test_the_queue_counter_goes_and_comes_back_seeded(unmigrated_postgres_url: str) -> None:
    """0007 drops 0006's counter with its triggers; going back down restores it, counting
    the jobs queued by then, and its trigger follows them again."""
    url = unmigrated_postgres_url
    upgrade(url, "0006")
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory.begin() as s:
        # Core, naming only columns 0006 has: the ORM would name every column of head's.
        key_id = new_id("key")
        s.execute(insert(ApiKey), [{"id": key_id, "name": "t", "key_hash": new_id("h")[-40:],
                                    "prefix": "sk-st-x"}])
        jobs = [{"id": new_id("ftjob"), "owner_id": key_id, "model": "m",
                 "task": "text-classification", "spec": {}, "seed": 1,
                 "training_file_id": "file-x", "status": status, "queued_at": utcnow(),
                 "artifact_prefix": "jobs/x"}
                for status in ["queued"] * 4 + ["running", "paused"]]
        s.execute(insert(Job), jobs)
    assert _queued_counter(engine) == (4, 4)

    upgrade(url)
    assert QUEUE_COUNTS not in table_names(url)
    with factory.begin() as s:  # no trigger left behind to fail on the missing table
        assert transitions.claim(s, jobs[0]["id"], owner="w", lease_seconds=60)
        assert transitions.resume(s, jobs[5]["id"])

    downgrade(url, "0006")
    assert _queued_counter(engine) == (4, 4)  # 3 left queued + the resumed one
    with factory.begin() as s:
        assert transitions.claim(s, jobs[1]["id"], owner="w", lease_seconds=60)
    assert _queued_counter(engine) == (3, 3)
    upgrade(url)
    assert QUEUE_COUNTS not in table_names(url)
    engine.dispose()


def test_0010_gives_existing_keys_the_servers_default_quotas(empty_url: str) -> None:
    """Keys made before 0010 get no quota of their own (NULL: the server's defaults); going
    down drops the columns and keeps the keys."""
    upgrade(empty_url, "0009")
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO api_keys (id, name, key_hash, prefix, created_at) "
                          "VALUES ('key-old', 'old', 'hash-old', 'sk-st-o', :now)"),
                     {"now": utcnow()})
    upgrade(empty_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT max_running_jobs, max_storage_bytes FROM api_keys")
                            ).all() == [(None, None)]
        conn.execute(text("UPDATE api_keys SET max_running_jobs = 2, "
                          "max_storage_bytes = 10737418240"))
    downgrade(empty_url, "0009")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM api_keys")).scalars().all() == ["key-old"]
        columns = {c["name"] for c in inspect(conn).get_columns("api_keys")}
    assert "max_running_jobs" not in columns and "max_storage_bytes" not in columns
    engine.dispose()
