"""What the Celery task does with a job: run it in a child process under
`sage_core.supervision` (the same path as the embedded executor's), with what is particular
to Celery workers:

- Placement. A job asking for N GPUs (`spec.resources.gpus`) takes N of the worker's slots
  at once or none (`sage_core.slots`): its GPUs, listed in its CUDA_VISIBLE_DEVICES, or on a
  machine without GPUs N process slots.
- A job that does not fit now waits up to `PLACE_WAIT_SECONDS` for slots to free here, then
  goes back to the broker unclaimed (sent again to its size's queue), so that a worker with
  room takes it. A job bigger than this whole worker (a message sent before its size was
  known) is sent on to its size's queue at once. See docs/DESIGN.md, "Placing jobs".
- Worker shutdown (SIGTERM: a deploy, `docker stop`) puts a running job back in the queue
  after its checkpoint; this sends it again at once, so that another worker continues it.
- A process that could not start raises, so that the task fails in the worker's log; the job
  stays queued and the reaper sends it again later, maybe to a healthier worker (until the
  supervision's start-failure limit fails it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sage_core.db.models import JobStatus
from sage_core.db.placement import job_gpus
from sage_core.slots import Slots
from sage_core.supervision import JobSupervisor

log = logging.getLogger("sagetrain.worker")
PLACE_WAIT_SECONDS = 5.0


def supervise(job_id: str, supervisor: JobSupervisor, *, slots: Slots,
              send_again: Callable[[str, int], None],
              taken: Callable[[str], None] = lambda job_id: None,
              place_wait_seconds: float = PLACE_WAIT_SECONDS) -> str | None:
    """Run the job in a child process if it is queued and fits. Returns its status
    afterwards, or None if it was not queued (a duplicate message, a cancelled or paused
    job) or went back to the broker (it did not fit). `send_again(job_id, gpus)` sends it to
    its size's queue; `taken(job_id)` says that its message is off the broker (the reaper
    may send it again later), once this worker holds its slots. A job waiting here for
    slots still counts as sent, so that the reaper adds no duplicate meanwhile."""
    with supervisor.sessions() as s:
        gpus = job_gpus(s, job_id)
    if gpus is None:
        taken(job_id)
        return None
    if gpus > len(slots):
        if supervisor.job_status(job_id) == JobStatus.QUEUED:
            log.warning("[%s] asks for %d GPUs, more than this worker's %d; sending it on to "
                        "its queue", job_id, gpus, len(slots))
            send_again(job_id, gpus)
        else:
            taken(job_id)
        return None
    with slots.take(gpus, place_wait_seconds) as held:
        if held is None:
            if supervisor.job_status(job_id) == JobStatus.QUEUED:
                log.info("[%s] needs %d free slots; back to the broker for a worker with room",
                         job_id, gpus)
                send_again(job_id, gpus)
            else:
                taken(job_id)
            return None
        taken(job_id)
        settled = supervisor.run(job_id, env=slots.env(held))
    if settled is None:
        return None
    handed_back = settled.returncode == 0 or supervisor.shutdown.is_set()
    if settled.claimed and handed_back and settled.status == JobStatus.QUEUED:
        send_again(job_id, gpus)  # shut down mid-job: let another worker continue it now
    elif settled.start_failed:
        raise RuntimeError(f"the process for job {job_id} exited with {settled.returncode} "
                           "without running it; see the worker log")
    return settled.status
