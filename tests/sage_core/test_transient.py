"""Only database and broker connection problems are transient; the job's own errors are not."""

from __future__ import annotations

import sqlite3

import kombu.exceptions
import pytest
import redis.exceptions
from sqlalchemy import exc as sa_exc

from sage_core.errors import TrainingError
from sage_core.transient import TransientJobError, is_transient


def _wrapped(orig: Exception) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize("exc", [
    _wrapped(Exception("server closed the connection unexpectedly")),
    _wrapped(sqlite3.OperationalError("database is locked")),
    sa_exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
    redis.exceptions.ConnectionError("Connection refused"),
    kombu.exceptions.OperationalError("Error 111 connecting"),
    ConnectionRefusedError(111, "refused"),
])
def test_transient(exc: Exception) -> None:
    assert is_transient(exc)
    try:
        raise TransientJobError("x") from exc
    except TransientJobError as outer:
        assert is_transient(outer)


@pytest.mark.parametrize("exc", [
    _wrapped(sqlite3.OperationalError("no such table: jobs")),
    TrainingError("training loss is nan at step 3", code="nan_loss"),
    RuntimeError("CUDA out of memory"),
    MemoryError(),
    ValueError("bad label"),
])
def test_not_transient(exc: Exception) -> None:
    assert not is_transient(exc)


def test_an_error_while_handling_one_is_judged_by_itself() -> None:
    try:
        try:
            raise redis.exceptions.ConnectionError("down")
        except redis.exceptions.ConnectionError:
            raise ValueError("a bug in the handler")  # noqa: B904
    except ValueError as exc:
        assert not is_transient(exc)


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (matched by name)."""


def test_out_of_memory_is_recognised_and_explained() -> None:
    from sage_core.transient import is_out_of_memory, out_of_memory_message

    oom = OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(oom) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate: out of memory"))
    assert not is_out_of_memory(ValueError("bad label")) and not is_transient(oom)
    assert "smaller batch_size" in out_of_memory_message(oom)
