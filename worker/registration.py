"""A Celery worker's row in the `workers` registry (`sage_core.db.placement`): added on
`worker_ready`, renewed every `heartbeat_seconds` by a thread of its own, deleted when the
worker shuts down. It says how many slots (GPUs) the worker holds, which is what the reapers
compare a queued job's size with; a worker killed without a word stops beating and counts as
gone after `lease_seconds`."""

from __future__ import annotations

import logging

from sage_core.db import placement
from sage_core.db.session import get_engine, make_session_factory
from sage_core.periodic import PeriodicThread
from sage_core.settings import Settings
from sage_core.slots import Slots

log = logging.getLogger("sagetrain.worker")


class Registration:
    def __init__(self, settings: Settings, slots: Slots):
        self.settings, self.slots = settings, slots
        self.sessions = make_session_factory(get_engine(settings))
        self.worker_id: str | None = None
        self._thread: PeriodicThread | None = None

    def start(self, worker_id: str) -> None:
        self.worker_id = worker_id
        try:
            self.beat()  # at once: the reapers see this worker before its first job
        except Exception:  # the database is down: the thread tries again
            log.warning("could not register worker %s", worker_id, exc_info=True)
        self._thread = PeriodicThread("sagetrain-registration", self.beat,
                                      self.settings.heartbeat_seconds).start()
        log.info("worker %s registered with %d slot(s)%s", worker_id, len(self.slots),
                 f": GPUs {','.join(self.slots.ids)}" if self.slots.gpus else "")

    def beat(self) -> None:
        assert self.worker_id is not None
        with self.sessions.begin() as s:
            placement.beat(s, self.worker_id, slots=len(self.slots),
                           gpus=self.slots.ids if self.slots.gpus else None)

    def stop(self) -> None:
        if self._thread is None or self.worker_id is None:
            return
        self._thread.stop()
        try:
            with self.sessions.begin() as s:
                placement.leave(s, self.worker_id)
        except Exception:  # its heartbeat stops: it counts as gone after a lease
            log.warning("could not unregister worker %s", self.worker_id, exc_info=True)
