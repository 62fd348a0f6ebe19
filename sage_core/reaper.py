"""The reaper: a periodic thread that keeps every job moving when workers or the broker
fail. It runs in `sagetrain serve` (with a broker) and in every Celery worker; several at
once are harmless, since each change it makes is a conditional UPDATE.

Each round:
1. Running jobs whose lease expired (their worker died) go back to the queue, or fail
   after too many lost workers (`sage_core.db.recovery`); the requeued ones are sent.
2. Jobs queued for longer than `redispatch_after` with no message waiting for them on the
   broker (Redis restarted empty, or was down when they were created) are sent again.
   The database is the source of truth; the broker only carries wake-up calls.
3. Queued jobs asking for more GPUs than the largest live worker has (`workers` registry)
   are told so once, and fail after `gpu_wait_seconds` (`sage_core.db.placement`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from sage_core.db import placement
from sage_core.db.recovery import reap_expired_leases, seconds_ago, waiting_jobs
from sage_core.db.session import get_engine, make_session_factory
from sage_core.periodic import PeriodicThread
from sage_core.settings import Settings

log = logging.getLogger("sagetrain.reaper")


class Reaper:
    def __init__(self, settings: Settings, dispatch: Callable[[str], None], *,
                 is_dispatched: Callable[[str], bool] = lambda job_id: False,
                 interval: float | None = None):
        self.settings = settings
        self.dispatch, self.is_dispatched = dispatch, is_dispatched
        self.interval = interval if interval is not None else settings.reaper_interval
        self.sessions: sessionmaker[Session] = make_session_factory(get_engine(settings))
        self._thread = PeriodicThread("sagetrain-reaper", self.run_once, self.interval)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._thread.stop(timeout)

    def run_once(self) -> list[str]:
        """One round; returns the ids of the jobs it sent."""
        with self.sessions.begin() as s:
            moved = reap_expired_leases(s, max_lost_leases=self.settings.max_lost_leases)
        with self.sessions.begin() as s:
            largest = placement.largest_live(s, lease_seconds=self.settings.lease_seconds)
            placement.hold_oversized(s, largest=largest,
                                     wait_seconds=self.settings.gpu_wait_seconds)
            placement.forget_gone_workers(s)
        with self.sessions() as s:
            waiting = waiting_jobs(s, queued_before=seconds_ago(self.settings.redispatch_after))
        requeued = [job_id for job_id, status in moved.items() if status == "queued"]
        # A job whose worker died may still be marked from its first send: send it anyway.
        stale = [job_id for job_id in waiting
                 if job_id not in requeued and not self.is_dispatched(job_id)]
        sent = []
        for job_id in requeued + stale:
            self.dispatch(job_id)
            sent.append(job_id)
        if sent:
            log.info("reaper: sent %d job(s) again: %s", len(sent), ", ".join(sent))
        return sent
