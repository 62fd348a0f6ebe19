"""The dispatch mark ("a message for this job waits on the broker") against a real Redis:
it must never outlive the message it stands for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from service_fixtures import redis_namespace
from worker_helpers import WorkerEnv

from sage_core.broker import (
    CeleryDispatcher,
    DispatchMarks,
    create_celery,
    publish,
    worker_queues,
)
from sage_core.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with redis_namespace() as (url, prefix):
        yield Settings(data_dir=tmp_path, broker_url=url, broker_key_prefix=prefix)


def test_a_message_taken_before_send_returns_leaves_no_mark(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker clears the mark as it takes the message, and may do so before send_task
    has returned to the sender; the mark must not be set after that."""
    app, marks = create_celery(settings, main="marks-test"), DispatchMarks(settings)
    sent = app.send_task

    def send_and_taken_at_once(*args: Any, **kwargs: Any) -> Any:
        result = sent(*args, **kwargs)
        marks.clear("ftjob-taken")  # what the worker's run_job does first
        return result

    monkeypatch.setattr(app, "send_task", send_and_taken_at_once)
    try:
        publish(app, marks, "ftjob-taken")
        assert not marks.is_marked("ftjob-taken")
        monkeypatch.undo()
        publish(app, marks, "ftjob-waiting")  # no worker listens: its message waits
        assert marks.is_marked("ftjob-waiting")
    finally:
        marks.close()
        app.close()


def test_a_message_that_could_not_be_sent_leaves_no_mark(settings: Settings) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    app, marks = create_celery(down, main="marks-test"), DispatchMarks(settings)
    try:
        with pytest.raises(Exception):  # noqa: B017 (whichever kombu raises)
            publish(app, marks, "ftjob-unsent")
        assert not marks.is_marked("ftjob-unsent")
    finally:
        marks.close()
        app.close()


def test_the_one_dispatcher_marks_sends_and_clears(settings: Settings) -> None:
    """CeleryDispatcher is what both the API and the workers' reapers send with; a worker
    that takes a message clears its mark through it."""
    dispatcher = CeleryDispatcher(settings)
    try:
        dispatcher.dispatch("ftjob-sent")  # no worker listens: its message waits
        assert dispatcher.is_dispatched("ftjob-sent")
        dispatcher.taken("ftjob-sent")
        assert not dispatcher.is_dispatched("ftjob-sent")
    finally:
        dispatcher.close()
    down = CeleryDispatcher(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    try:
        down.taken("ftjob-sent")  # logged, never raised: a mark left behind expires
    finally:
        down.close()


def test_a_job_goes_to_the_queue_of_its_size(env: WorkerEnv) -> None:
    """A worker with K slots consumes the queues of sizes 1 to K, so a job's message reaches
    only workers big enough for it. A job whose size cannot be read goes to size 1's queue."""
    assert worker_queues(["gpu"], 3) == ["gpu", "gpu.2", "gpu.3"]
    with redis_namespace() as (url, prefix):
        settings = env.settings.model_copy(update={"broker_url": url,
                                                   "broker_key_prefix": prefix})
        dispatcher = CeleryDispatcher(settings)
        client = redis.Redis.from_url(url)
        try:
            dispatcher.dispatch(env.add_job(gpus=2))
            dispatcher.dispatch(env.add_job())
            dispatcher.dispatch("ftjob-unknown")
            dispatcher.dispatch("ftjob-told", gpus=3)
            lengths = {q: client.llen(f"{prefix}{q}") for q in ("gpu", "gpu.2", "gpu.3")}
            assert lengths == {"gpu": 2, "gpu.2": 1, "gpu.3": 1}
        finally:
            client.close()
            dispatcher.close()
