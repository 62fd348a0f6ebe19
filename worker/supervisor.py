"""What the Celery task does with a job: run it in a child process under
`sage_core.supervision` (the same path as the embedded executor's), with what is particular
to Celery workers:

- Each concurrent job gets one of the worker's GPUs (CUDA_VISIBLE_DEVICES), if it has a list.
- Worker shutdown (SIGTERM: a deploy, `docker stop`) puts a running job back in the queue
  after its checkpoint; this sends it again at once, so that another worker continues it.
- A process that could not start raises, so that the task fails in the worker's log; the job
  stays queued and the reaper sends it again later, maybe to a healthier worker (until the
  supervision's start-failure limit fails it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sage_core.db.models import JobStatus
from sage_core.supervision import JobSupervisor


class GpuSlots:
    """Hands each concurrent job one of the worker's GPUs (CUDA_VISIBLE_DEVICES)."""

    def __init__(self, gpus: list[str]):
        self._free = list(gpus)
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[str | None]:
        with self._lock:
            gpu = self._free.pop(0) if self._free else None
        try:
            yield gpu
        finally:
            if gpu is not None:
                with self._lock:
                    self._free.append(gpu)


def parse_gpus(value: str | None) -> list[str]:
    return [g.strip() for g in (value or "").split(",") if g.strip()]


def supervise(job_id: str, supervisor: JobSupervisor, *, gpus: GpuSlots,
              send_again: Callable[[str], None]) -> str | None:
    """Run the job in a child process if it is queued. Returns its status afterwards, or
    None if it was not queued (a duplicate message, a cancelled or paused job)."""
    with gpus.take() as gpu:
        settled = supervisor.run(job_id, env={} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu})
    if settled is None:
        return None
    if settled.claimed and settled.returncode == 0 and settled.status == JobStatus.QUEUED:
        send_again(job_id)  # shut down mid-job: let another worker continue it now
    elif settled.start_failed:
        raise RuntimeError(f"the process for job {job_id} exited with {settled.returncode} "
                           "without running it; see the worker log")
    return settled.status
