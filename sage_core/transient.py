"""Which errors are worth retrying: the database or the broker being briefly unreachable.

Everything else (out of memory, a NaN loss, bad data, a bug) fails the job with a clear
error at once; retrying would only fail again, later, after holding a GPU.
"""

from __future__ import annotations

import sqlite3

# Exit status of `python -m worker run` when the job stopped on a transient error and was
# left for another attempt (EX_TEMPFAIL from sysexits.h).
EXIT_TRANSIENT = 75


class TransientJobError(RuntimeError):
    """A job stopped because the database or broker was unreachable. Its lease is left to
    expire, or its supervisor puts it back in the queue; either way it is retried."""


def _transient_types() -> tuple[type[BaseException], ...]:
    from sqlalchemy import exc as sa_exc

    types: list[type[BaseException]] = [
        sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
        sa_exc.TimeoutError,  # the connection pool is exhausted: the database is slow
        ConnectionError, TimeoutError,  # OSError subclasses: refused, reset, timed out
    ]
    try:
        import redis.exceptions

        types += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    try:
        import kombu.exceptions

        types.append(kombu.exceptions.OperationalError)
    except ImportError:  # pragma: no cover - celery brings kombu
        pass
    return tuple(types)


def is_transient(exc: BaseException) -> bool:
    """True for a database or broker connection problem, the error or any of its causes
    (`raise ... from`; not an error raised while handling another one)."""
    types = _transient_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, types) and not _permanent_sqlite_error(current):
            return True
        current = current.__cause__
    return False


def _permanent_sqlite_error(exc: BaseException) -> bool:
    """SQLite reports a missing table and a locked file with the same OperationalError; only
    a locked or busy database is worth waiting for."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return "locked" not in text and "busy" not in text
    return False


def is_out_of_memory(exc: BaseException) -> bool:
    """A device or host out-of-memory error: the job needs a smaller batch or sequence
    length, or a bigger GPU. Checked by name, so that this module never imports torch."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"OutOfMemoryError", "MemoryError"}) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def out_of_memory_message(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"out of memory ({first}); try a smaller batch_size or max_seq_length, or "
            "gradient_accumulation_steps")
