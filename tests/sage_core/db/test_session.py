"""SQLite sessions (issue 17, item 1): reads begin DEFERRED and never wait for the write
lock; writes begin IMMEDIATE; background engines wait out a locked database, with backoff
and a cap, instead of failing at once."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from sage_core.db import session as db_session
from sage_core.db.session import make_engine, make_session_factory, read_only


@pytest.fixture
def db_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(db_session, "SQLITE_BUSY_TIMEOUT_MS", 100)  # fail fast when locked
    path = tmp_path / "t.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    return path


@pytest.fixture
def locked(db_file: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the write lock (as a long write in another process)."""
    holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    yield holder
    holder.close()


def test_reads_do_not_wait_for_the_write_lock(db_file: Path, locked: sqlite3.Connection) -> None:
    engine = make_engine(f"sqlite:///{db_file}")
    started = time.monotonic()
    with make_session_factory(read_only(engine))() as session:
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 0
    assert time.monotonic() - started < 0.5
    with pytest.raises(OperationalError, match="locked"),  \
            make_session_factory(engine).begin() as session:  # a writer must wait for it
        session.execute(text("SELECT count(*) FROM t"))
    engine.dispose()


def test_a_background_engine_waits_out_a_locked_database(
        db_file: Path, locked: sqlite3.Connection) -> None:
    engine = make_engine(f"sqlite:///{db_file}", lock_retry_seconds=30)
    threading.Timer(1.5, locked.commit).start()  # the other writer finishes
    started = time.monotonic()
    with make_session_factory(engine).begin() as session:
        session.execute(text("INSERT INTO t VALUES (2)"))
    assert 1.0 < time.monotonic() - started < 20
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 2
    engine.dispose()


def test_the_wait_has_a_cap(db_file: Path, locked: sqlite3.Connection) -> None:
    engine = make_engine(f"sqlite:///{db_file}", lock_retry_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(OperationalError, match="locked"), \
            make_session_factory(engine).begin() as session:
        session.execute(text("INSERT INTO t VALUES (2)"))
    assert time.monotonic() - started < 10
    engine.dispose()
