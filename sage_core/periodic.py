"""A daemon thread that does one round of work every `interval` seconds, until stopped: the
reaper, the webhook sender and the embedded executor are each one.

A round that raises is logged and the next comes as usual, so a database or broker that is
briefly down never ends the thread. `wake()` starts the next round now instead of at the end
of the interval (a new job to run); `stop()` ends the thread after the round in progress.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("sagetrain.periodic")


class PeriodicThread:
    def __init__(self, name: str, work: Callable[[], object], interval: float):
        if interval <= 0:
            raise ValueError(f"Invalid interval: {interval}")
        self.name, self.work, self.interval = name, work, interval
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeriodicThread:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop after the round in progress, waiting up to `timeout` seconds for it. Returns
        whether the thread has ended."""
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.work()
            except Exception:  # the database or broker is down: try again next round
                log.warning("%s: round failed", self.name, exc_info=True)
