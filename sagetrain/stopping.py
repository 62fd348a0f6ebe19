"""A bounded stop for `sagetrain serve`: whatever the server is doing, SIGTERM or Ctrl-C
ends it within `timeout` seconds (SAGETRAIN_SHUTDOWN_TIMEOUT_SECONDS), with status 0.

uvicorn alone stops accepting, then waits for every open connection to finish its request
with no limit (an upload arriving slowly, an event stream, a burst of requests each waiting
on a locked database), and takes only a second SIGINT, not a second SIGTERM, as "now". It
also raises the signal again once it has stopped, which under SIGTERM kills the process
before `serve` has stopped its jobs. `StoppingServer` instead, on the first signal:

- logs what it waits on (requests in flight, running jobs);
- starts `on_stop` at once in a thread of its own (the running job checkpoints and goes back
  to the queue, in parallel with the requests' wait);
- has requests still in flight at the deadline answered 503 and their connections closed
  (`sagetrain.http_protocol`); uvicorn cancels what is left one second later, and the
  process exits then without waiting for a request's thread that cannot be cancelled;
- and, should something still hold the process (a request's thread blocked in the database),
  exits a few seconds after the deadline anyway, naming what it gave up on
  (`sage_core.stopping`).

A second signal exits at once (status 1), killing the jobs' processes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn

from sage_core.stopping import EXIT_SLACK_SECONDS, hard_exit

log = logging.getLogger("sagetrain.serve")
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StoppingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, timeout: float,
                 on_stop: Callable[[], None], running_jobs: Callable[[], list[str]],
                 kill_jobs: Callable[[], None]):
        super().__init__(config)
        self.timeout = timeout
        self._on_stop, self._running_jobs, self._kill_jobs = on_stop, running_jobs, kill_jobs
        self.stopper: threading.Thread | None = None
        self._signalled_at = 0.0

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn's own raises the signal again on the way out: under SIGTERM, that would
        # kill this process before `serve` has stopped its jobs and returned 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.stopper is not None:
            log.warning("%s again: exiting now; running jobs are killed and resume from "
                        "their last checkpoint", name)
            self._kill_jobs()
            hard_exit(1)
        super().handle_exit(sig, frame)
        self.should_exit = True
        self._signalled_at = time.monotonic()
        jobs = self._running_jobs()
        log.info("%s: stopping; waiting up to %.0f s for %d request(s) in flight%s; a second "
                 "signal exits at once", name, self.timeout, self.requests_in_flight(),
                 "".join(f", for job {job_id} to checkpoint" for job_id in jobs))
        self.stopper = threading.Thread(target=self._on_stop, name="sagetrain-stop",
                                        daemon=True)
        self.stopper.start()
        watchdog = threading.Timer(self.timeout + EXIT_SLACK_SECONDS, self._give_up)
        watchdog.daemon = True
        watchdog.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        await asyncio.sleep(0.1)  # cancelled requests end, unless a thread holds them
        stuck = [task for task in self.server_state.tasks if not task.done()]
        if stuck:
            # asyncio.run would wait for their threads (a database call) on the way out.
            log.warning("%d request(s) still running in a thread after the deadline; "
                        "exiting without them", len(stuck))
            self.wait_for_stop()
            hard_exit(0)

    def requests_in_flight(self) -> int:
        return sum(1 for c in list(self.server_state.connections)
                   if getattr(c, "in_flight", lambda: False)())

    def wait_for_stop(self) -> None:
        """Wait for `on_stop` to end, if a signal started it, until the deadline."""
        if self.stopper is not None:
            self.stopper.join(max(0.0, self._signalled_at + self.timeout - time.monotonic()))

    def _give_up(self) -> None:
        threads = [t.name for t in threading.enumerate()
                   if t is not threading.current_thread() and not t.daemon
                   and t is not threading.main_thread()]
        log.warning("still not stopped %.0f s after the signal (%d request(s) in flight, "
                    "jobs %s, threads %s); exiting", self.timeout + EXIT_SLACK_SECONDS,
                    self.requests_in_flight(), self._running_jobs() or "none",
                    ", ".join(threads) or "none")
        self._kill_jobs()
        hard_exit(0)

