"""The contract between whoever queues jobs (the API, the reaper) and the Celery workers
that run them: the task name, the Celery settings both sides share, and dispatch marks.

- One task, `sagetrain.jobs.run`, whose only argument is the job id; the worker re-reads
  the row. It is sent by name, so the sender never imports the worker (nor torch).
- A queue per job size: a job asking for N GPUs (slots) goes to `queue_for(base, N)`
  (`gpu` for N = 1, `gpu.N` above), and a worker with K slots consumes the queues of sizes
  1 to K (`worker_queues`), so that a message only reaches workers big enough for its job.
  The dispatcher reads the job's size from the database (by id, as the worker does); if it
  cannot, it sends to the base queue, and a worker too small for the job sends it on to its
  own queue (`worker.supervisor`).
- Long tasks: acks late, rejected (re-queued) if the worker process is lost, prefetch 1,
  JSON only. Redis hands an unacknowledged message to another worker after
  `broker_visibility_timeout`, which may be shorter than a job: that re-delivery is
  harmless, because the worker must claim the job row under a lease first, and a running
  job's lease is alive (renewed by heartbeat), so the duplicate finds it taken and returns.
- Dispatch marks: a Redis key per job, set when its message is sent and cleared when a
  worker takes the message. The reaper re-sends a long-queued job only when it has no
  mark, so that jobs waiting behind a long queue do not pile up duplicates, while a job
  whose message was lost (Redis restarted empty, or the broker was down when the job was
  created) is sent again: the marks vanish with the messages. A mark also expires after
  the visibility timeout, so nothing waits forever on a stale one.

`CeleryDispatcher` is the one sender, for the API (through `sagetrain serve`) and for the
workers' own reapers. Celery is imported only when an app is made; nothing here connects at
import time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sage_core.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

TASK_NAME = "sagetrain.jobs.run"
log = logging.getLogger("sagetrain.broker")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for both the workers and the senders."""
    if not settings.broker_url:
        raise ValueError("SAGETRAIN_BROKER_URL is not set")
    transport: dict[str, Any] = {"visibility_timeout": settings.broker_visibility_timeout}
    if settings.broker_key_prefix:
        transport["global_keyprefix"] = settings.broker_key_prefix
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a worker waits out a Redis restart
        "broker_connection_timeout": 5,
        # A publish while Redis is down fails fast: the API answers, and the reaper sends
        # the job once Redis is back.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0.2,
                                      "interval_step": 0.5, "interval_max": 1.0},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # results live in the database
        "task_default_queue": settings.task_queue,
        "task_routes": {TASK_NAME: {"queue": settings.task_queue}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A broker blip must not abandon a job that is training fine.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }


def queue_for(base: str, gpus: int) -> str:
    """The queue of jobs asking for `gpus` GPUs (slots)."""
    if gpus < 1:
        raise ValueError(f"Invalid gpus: {gpus}")
    return base if gpus == 1 else f"{base}.{gpus}"


def worker_queues(bases: list[str], slots: int) -> list[str]:
    """The queues a worker with `slots` slots consumes: every size it can hold."""
    return [queue_for(base, n) for base in bases for n in range(1, slots + 1)]


def create_celery(settings: Settings, main: str = "sagetrain") -> Celery:
    from celery import Celery

    app = Celery(main, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class DispatchMarks:
    """Per-job Redis keys saying "a message for this job is waiting on the broker"."""

    def __init__(self, settings: Settings):
        url = settings.broker_url or ""
        self.enabled = url.startswith(("redis://", "rediss://", "unix://"))
        self.ttl = settings.broker_visibility_timeout
        self.prefix = f"{settings.broker_key_prefix}sagetrain:dispatched:"
        self._client: Any = None
        if self.enabled:
            import redis

            self._client = redis.Redis.from_url(url, socket_timeout=5,
                                                socket_connect_timeout=5)

    def mark(self, job_id: str) -> None:
        if self.enabled:
            self._client.set(self.prefix + job_id, "1", ex=self.ttl)

    def clear(self, job_id: str) -> None:
        if self.enabled:
            self._client.delete(self.prefix + job_id)

    def is_marked(self, job_id: str) -> bool:
        """False without Redis: then every long-queued job is simply sent again."""
        return bool(self.enabled and self._client.exists(self.prefix + job_id))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def publish(app: Celery, marks: DispatchMarks, job_id: str, queue: str | None = None) -> None:
    """Mark the job sent, then send its message (by task name). Raises if the broker is
    unreachable; the caller decides whether that matters (the reaper will send it later).

    The mark comes first because a worker clears it as it takes the message, which can be
    before send_task returns: marking afterwards would leave a mark for a message already
    taken, and the reaper would not send the job again until the mark expired."""
    try:
        marks.mark(job_id)
    except Exception:  # only costs a duplicate message later
        log.warning("[%s] could not mark it sent", job_id, exc_info=True)
    try:
        app.send_task(TASK_NAME, args=[job_id], queue=queue)
    except Exception:
        try:
            marks.clear(job_id)
        except Exception:  # Redis is down too: the mark expires with its TTL
            log.warning("[%s] could not clear its mark", job_id, exc_info=True)
        raise


class CeleryDispatcher:
    """Sends jobs to the Celery workers: the API's Dispatcher, and the reaper's. `dispatch`
    never raises: a job whose message could not be sent stays queued in the database, and
    the reaper sends it later."""

    def __init__(self, settings: Settings, app: Celery | None = None):
        self.settings = settings
        self.app = app or create_celery(settings, main="sagetrain-dispatch")
        self.marks = DispatchMarks(settings)

    def dispatch(self, job_id: str, gpus: int | None = None) -> None:
        """Send the job to the queue of its size: `gpus`, else read from its row."""
        queue = queue_for(self.settings.task_queue, gpus or self._job_gpus(job_id))
        try:
            publish(self.app, self.marks, job_id, queue)
        except Exception as exc:
            log.warning("[%s] could not reach the broker (%s: %s); the job stays queued and "
                        "is sent when the broker is back", job_id, type(exc).__name__, exc)

    def _job_gpus(self, job_id: str) -> int:
        from sage_core.db.placement import job_gpus
        from sage_core.db.session import get_engine, make_session_factory

        try:
            with make_session_factory(get_engine(self.settings))() as s:
                return job_gpus(s, job_id) or 1
        except Exception as exc:  # a worker too small for the job sends it on
            log.warning("[%s] could not read its size (%s: %s); sending it to the queue of "
                        "one-GPU jobs", job_id, type(exc).__name__, exc)
            return 1

    def is_dispatched(self, job_id: str) -> bool:
        try:
            return self.marks.is_marked(job_id)
        except Exception:  # Redis is down: sending fails anyway, so say "not sent"
            return False

    def taken(self, job_id: str) -> None:
        """A worker took the job's message: clear its mark, so that the reaper may send it
        again later. Never raises: a mark left behind expires with its TTL."""
        try:
            self.marks.clear(job_id)
        except Exception:
            log.warning("[%s] could not clear its dispatch mark", job_id, exc_info=True)

    def close(self) -> None:
        self.marks.close()
        self.app.close()
