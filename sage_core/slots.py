"""A worker's slots: its GPUs (`--gpus 0,1,2,3`), or on a machine without GPUs a number of
processes (`--slots N`), handed to jobs N at a time, N being the job's
`spec.resources.gpus`.

A job takes its N slots at once or none (`Slots.take`), so two jobs never share a GPU, and no
job holds part of what it needs while it waits for the rest (no deadlock between two jobs
each holding half). Its process gets `SAGETRAIN_JOB_SLOTS` (the slot ids it holds) and, on a
GPU worker, CUDA_VISIBLE_DEVICES listing all N of its GPUs. Used by the Celery worker
(`worker.supervisor`) and the embedded executor (`sagetrain.executor`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sage_core.settings import Settings

JOB_SLOTS_ENV = "SAGETRAIN_JOB_SLOTS"


class Slots:
    """A worker's slots (GPU ids, or process numbers on a CPU-only worker), handed to jobs N
    at a time. Thread-safe: the Celery pool's threads take and give back concurrently."""

    def __init__(self, ids: list[str], *, gpus: bool):
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"Invalid slots: {ids}")
        self.ids, self.gpus = list(ids), gpus
        self._free = list(ids)
        self._changed = threading.Condition()

    def __len__(self) -> int:
        return len(self.ids)

    @contextmanager
    def take(self, n: int, timeout: float = 0.0) -> Iterator[list[str] | None]:
        """Hold `n` slots, waiting up to `timeout` seconds for them to be free at once; yields
        them (lowest first), or None if they were not free in time. Never holds fewer."""
        if not 1 <= n <= len(self.ids):
            raise ValueError(f"Invalid slot count: {n} (this worker has {len(self.ids)})")
        with self._changed:
            if self._changed.wait_for(lambda: len(self._free) >= n, timeout):
                taken = sorted(self._free, key=self.ids.index)[:n]
                self._free = [s for s in self._free if s not in taken]
            else:
                taken = None
        try:
            yield taken
        finally:
            if taken is not None:
                with self._changed:
                    self._free.extend(taken)
                    self._changed.notify_all()

    def env(self, taken: list[str]) -> dict[str, str]:
        """The job process's environment for the slots it holds."""
        env = {JOB_SLOTS_ENV: ",".join(taken)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
        return env


def parse_gpus(value: str | None) -> list[str]:
    return [g.strip() for g in (value or "").split(",") if g.strip()]


def worker_slots(settings: Settings) -> Slots:
    """The slots a worker holds: SAGETRAIN_WORKER_GPUS, else SAGETRAIN_WORKER_SLOTS processes
    (default 1)."""
    gpus = parse_gpus(settings.worker_gpus)
    if gpus:
        return Slots(gpus, gpus=True)
    return Slots([str(i) for i in range(settings.worker_slots or 1)], gpus=False)
