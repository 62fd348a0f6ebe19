"""The migrations build the models' schema, and go down and up again, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sage_core.db.migrate import downgrade, table_names, upgrade
from sage_core.db.models import Base
from sage_core.db.session import make_engine

TABLES = {"api_keys", "files", "jobs", "job_events", "job_metrics", "checkpoints"}
# Kept by a trigger on PostgreSQL only (migration 0006) and never read through the ORM, so
# not a model: left out of the comparison by name, and checked here to exist where it should.
QUEUE_COUNTS = "job_queue_counts"


def _modelled(obj: object, name: str | None, type_: str, reflected: bool,
              compare_to: object) -> bool:
    return not (type_ == "table" and name == QUEUE_COUNTS)


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
    assert (QUEUE_COUNTS in table_names(empty_url)) == empty_url.startswith("postgresql")

    engine = make_engine(empty_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": _modelled})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"
