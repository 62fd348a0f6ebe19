"""Engines and sessions from settings: SQLite (the embedded default) or PostgreSQL.

SQLite runs in WAL mode with a busy timeout and foreign keys on. A transaction that may
write starts with BEGIN IMMEDIATE: the API and a job's process write the same file, and a
deferred transaction that reads and then writes fails at once ("database is locked") when
another writer committed in between, instead of waiting for the lock. Work that only reads
uses `read_only(engine)`, whose transactions start with a plain (deferred) BEGIN: in WAL mode
readers never wait for the write lock, so a burst of reads (key lookups, listings) cannot
queue behind, or hold up, the writers.

Processes that run in the background (a job's process, the reaper, a worker) get their engine
from `get_engine`, which waits out a locked database: a BEGIN IMMEDIATE that timed out is
tried again with backoff, for up to `settings.database_lock_retry_seconds` in all. The API
does not: a request that cannot get the lock is answered 503 with Retry-After.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from sage_core.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The execution option that picks how a SQLite transaction begins (see `read_only`).
_BEGIN_OPTION = "sqlite_begin"
_LOCK_RETRY_FIRST_WAIT, _LOCK_RETRY_MAX_WAIT = 0.5, 8.0

log = logging.getLogger("sagetrain.db")

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def make_engine(url: str, *, lock_retry_seconds: float = 0.0, **kwargs: Any) -> Engine:
    """A new engine for `url`, with the SQLite pragmas set on every connection. On SQLite, a
    BEGIN IMMEDIATE that finds the database locked past the busy timeout is tried again
    with backoff for up to `lock_retry_seconds` (0: it fails at once)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine, lock_retry_seconds)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_recycle", 1800)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine, lock_retry_seconds: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below issue BEGIN, not the sqlite3 module.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(_BEGIN_OPTION) == "DEFERRED":
            conn.exec_driver_sql("BEGIN")
            return
        _begin_immediate(conn, lock_retry_seconds)


def _begin_immediate(conn: Any, retry_seconds: float) -> None:
    from sqlalchemy.exc import OperationalError

    deadline, wait = time.monotonic() + retry_seconds, _LOCK_RETRY_FIRST_WAIT
    while True:
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        except OperationalError as exc:
            if "locked" not in str(exc.orig) or time.monotonic() + wait > deadline:
                raise
            log.warning("the database is locked; trying again in %.1f s", wait)
        time.sleep(wait)
        wait = min(wait * 2, _LOCK_RETRY_MAX_WAIT)


def read_only(engine: Engine) -> Engine:
    """`engine` for work that only reads: on SQLite its transactions begin DEFERRED, so they
    never take or wait for the write lock (same pool and connections). A write through it
    may fail at once with "database is locked"; never write through it."""
    return engine.execution_options(**{_BEGIN_OPTION: "DEFERRED"})


def get_engine(settings: Settings) -> Engine:
    """The process-wide engine for the settings' database (one pool per URL)."""
    url = settings.resolved_database_url
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(
                url, lock_retry_seconds=settings.database_lock_retry_seconds)
        return engine


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: handlers serialize rows after committing them.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one short transaction: committed on success, rolled back on error."""
    with factory() as session, session.begin():
        yield session
