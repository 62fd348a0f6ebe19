"""Database fixtures for the service's tests (api, worker, db), over SQLite and PostgreSQL,
and a Redis namespace of a test's own.

PostgreSQL: a throwaway database `sagetrain_test_<random>` is created once per test session
(through the `test` database at SAGETRAIN_TEST_PG_URL, default
postgresql://postgres@127.0.0.1:5432/test), migrated once, emptied before each test and
dropped at the end. If PostgreSQL (or Redis) cannot be reached the cases that need it are
skipped, except with CI=true, where they fail.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sage_core.testing import throwaway_postgres

ADMIN_URL = os.environ.get(
    "SAGETRAIN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SAGETRAIN_TEST_REDIS_URL", "redis://127.0.0.1:6379")
BACKENDS = ["sqlite", "postgresql"]


def unreachable(what: str, reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required when CI=true: {reason}")
    pytest.skip(f"{what} not reachable: {reason}")


@contextmanager
def redis_namespace() -> Iterator[tuple[str, str]]:
    """(broker URL, key prefix): a random Redis database number 1-15 and a prefix unique to
    this run; every key under the prefix is deleted afterwards."""
    import redis

    url = f"{REDIS_URL}/{random.randint(1, 15)}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        client.close()
        unreachable("Redis", f"{url}: {type(exc).__name__}: {exc}")
    prefix = f"sagetrain-test-{secrets.token_hex(4)}:"
    try:
        yield url, prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped at the end of the session."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_postgres(ADMIN_URL, "sagetrain_test"))
        except Exception as exc:  # any connection failure means "unreachable"
            unreachable(f"PostgreSQL at {ADMIN_URL}",
                        f"{type(exc).__name__}: {exc}".splitlines()[0])
        yield url


@pytest.fixture
def unmigrated_postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database of the test's own, for tests that move the schema
    up and down (the shared one stays at head), dropped after the test."""
    with throwaway_postgres(ADMIN_URL, "sagetrain_schema") as url:
        yield url


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_server_url: str) -> str:
    from sage_core.db.migrate import upgrade

    upgrade(postgres_server_url)
    return postgres_server_url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sage_core.db.migrate import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def empty_postgres(url: str) -> None:
    """TRUNCATE every table."""
    from sage_core.db.models import Base

    engine = create_engine(url)
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "sagetrain.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("migrated_postgres_url")
    empty_postgres(url)
    return url
