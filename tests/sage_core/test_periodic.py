"""The periodic thread behind the reaper, the webhook sender and the embedded executor: it
runs its work each interval, at once when woken, survives a round that raises, and stops."""

from __future__ import annotations

import threading
import time

import pytest

from sage_core.periodic import PeriodicThread


def test_rounds_come_each_interval_and_survive_an_error() -> None:
    rounds: list[float] = []

    def work() -> None:
        rounds.append(time.monotonic())
        if len(rounds) == 1:
            raise RuntimeError("the database is down")

    thread = PeriodicThread("test-periodic", work, interval=0.05).start()
    deadline = time.monotonic() + 10
    while len(rounds) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread.stop(timeout=5)
    assert len(rounds) >= 3  # the first round's error did not end the thread


def test_wake_runs_a_round_now_and_stop_ends_the_thread() -> None:
    ran = threading.Event()
    thread = PeriodicThread("test-periodic", ran.set, interval=3600).start()
    assert not ran.wait(0.2)
    thread.wake()
    assert ran.wait(5)
    assert thread.stop(timeout=5)


def test_a_bad_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid interval: 0"):
        PeriodicThread("test-periodic", lambda: None, interval=0)
