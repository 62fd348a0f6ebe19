"""Distributed mode end to end: the API (in-process, CeleryDispatcher) sends jobs over real
Redis to real `sagetrain worker` processes sharing a real PostgreSQL database.

The workers are shared by the tests of this module (each starts in a few seconds, but each
job's process imports torch): two at first; the crash test kills one and starts another.
Each worker has its own data folder, as if on its own machine; they share an S3-compatible
artifact store, through which a job moved to another worker resumes from its checkpoint.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_cluster import Api, Cluster, job_pids, throwaway_postgres, wait_for
from fastapi.testclient import TestClient
from s3_fixtures import *  # noqa: F403
from s3_fixtures import S3Server
from service_fixtures import redis_namespace

from api.main import create_app
from sage_core.broker import TASK_NAME, CeleryDispatcher
from sage_core.db.keys import create_key

pytestmark = pytest.mark.slow
# Jobs stay under 200 steps, where the engine logs every step.


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
            s3_server: S3Server) -> Iterator[Cluster]:
    with throwaway_postgres() as db_url, redis_namespace() as (broker_url, prefix):
        root = tmp_path_factory.mktemp("cluster")
        cluster = Cluster(root, db_url, broker_url, prefix, models_dir,
                          s3_server.env(prefix=root.name))
        try:
            cluster.wait_ready(cluster.start_worker("w1"), cluster.start_worker("w2"))
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def dispatcher(cluster: Cluster) -> Iterator[CeleryDispatcher]:
    dispatcher = CeleryDispatcher(cluster.settings)
    yield dispatcher
    dispatcher.close()


@pytest.fixture(scope="module")
def api(cluster: Cluster, dispatcher: CeleryDispatcher) -> Iterator[Api]:
    with cluster.sessions.begin() as s:
        _, key = create_key(s, "celery-tests")
    app = create_app(cluster.settings, dispatcher=dispatcher)
    with TestClient(app) as client:
        yield Api(client, key)


def started_events(cluster: Cluster, job_id: str) -> list[str]:
    return [e for e in cluster.events(job_id) if e.startswith("Fine-tuning job started")]


def resumed_step(cluster: Cluster, job_id: str) -> int:
    (step,) = [int(m.group(1)) for e in cluster.events(job_id)
               if (m := re.fullmatch(r"resumed from step (\d+)", e))]
    return step


def test_job_runs_on_a_worker_over_http(cluster: Cluster, api: Api) -> None:
    job_id = api.create_job(16, n_epochs=2, validation_rows=8)
    cluster.wait_status(job_id, {"succeeded", "failed", "cancelled"}, 120)
    job = api.get(f"/v1/fine_tuning/jobs/{job_id}")
    assert job["status"] == "succeeded", (job, cluster.events(job_id))
    assert job["fine_tuned_model"].startswith("ft:tiny-bert:c:")
    assert job["progress"] == {"step": 8, "total_steps": 8, "epoch": 2.0}
    metrics = api.get(f"/v1/fine_tuning/jobs/{job_id}/metrics")["data"]
    assert [m["step"] for m in metrics if "train_loss" in m] == list(range(1, 9))
    checkpoints = api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")["data"]
    assert checkpoints and checkpoints[0]["step_number"] == 8
    events = [e["message"] for e in api.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100")
              ["data"]]
    assert "Fine-tuning job started (attempt 1)" in events
    assert cluster.job(job_id).lease_owner.startswith("celery:")


def test_a_duplicate_delivery_runs_the_job_once(cluster: Cluster, api: Api,
                                                dispatcher: CeleryDispatcher) -> None:
    job_id = api.create_job(40)
    for _ in range(2):  # the same message again, as a broker re-delivery would
        dispatcher.app.send_task(TASK_NAME, args=[job_id])
    cluster.wait_status(job_id, {"succeeded", "failed"}, 120)
    dispatcher.dispatch(job_id)  # and once more after it finished
    wait_for(lambda: not dispatcher.is_dispatched(job_id), 30, "the late duplicate to be taken")
    time.sleep(1)
    job = cluster.job(job_id)
    assert (job.status, job.attempt, job.lost_leases) == ("succeeded", 1, 0)
    assert len(started_events(cluster, job_id)) == 1
    steps = [m.step for m in cluster.metric_rows(job_id) if m.kind == "train"]
    assert steps == list(range(1, 11))  # one set of metrics


def test_two_idle_workers_one_job_runs_once(cluster: Cluster, api: Api,
                                            dispatcher: CeleryDispatcher) -> None:
    job_id = api.create_job(40)
    dispatcher.app.send_task(TASK_NAME, args=[job_id])  # both workers get a message
    cluster.wait_status(job_id, {"succeeded", "failed"}, 120)
    w1, w2 = cluster.workers[:2]
    wait_for(lambda: job_id in w1.text() and job_id in w2.text(), 20,
             "both workers to take a message for the job")
    job = cluster.job(job_id)
    assert (job.status, job.attempt) == ("succeeded", 1)
    assert len(started_events(cluster, job_id)) == 1
    steps = [m.step for m in cluster.metric_rows(job_id) if m.kind == "train"]
    assert steps == list(range(1, 11))


def test_a_job_queued_while_the_broker_was_down_runs_when_it_is_back(
        cluster: Cluster, api: Api) -> None:
    """The message was never sent (or Redis restarted empty): the reaper finds the job
    queued with no message waiting and sends it again."""
    dead = cluster.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    unreachable = CeleryDispatcher(dead)
    app = create_app(cluster.settings, dispatcher=unreachable)
    try:
        with TestClient(app) as client:
            job_id = Api(client, api.key).create_job(40)
    finally:
        unreachable.close()
    job = cluster.wait_status(job_id, {"succeeded", "failed"}, 120)
    assert (job.status, job.attempt) == ("succeeded", 1)


def test_cancel_stops_the_job_process(cluster: Cluster, api: Api) -> None:
    job_id = api.create_job(4000)
    wait_for(lambda: cluster.job(job_id).step > 0, 120, "the job to start training")
    assert job_pids(job_id)
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")["status"] == "cancelled"
    wait_for(lambda: not job_pids(job_id), 15, "the job's process to exit")
    job = cluster.job(job_id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert any(e.startswith("Training stopped at step") for e in cluster.events(job_id))


# 120 steps, each big enough that a job cannot finish between two of the runner's stop polls
# (about a second apart) on a quiet machine.
LONG_JOB = {"n_rows": 120 * 64, "batch_size": 64, "validation_split": 0}  # every row trains


def test_pause_frees_the_worker_and_resume_continues(cluster: Cluster, api: Api) -> None:
    job_id = api.create_job(**LONG_JOB)
    wait_for(lambda: cluster.job(job_id).step >= 3, 120, "the job to train a few steps")
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/pause")["status"] == "running"
    job = cluster.wait_status(job_id, {"paused"}, 30)
    paused_at = job.step
    wait_for(lambda: not job_pids(job_id), 15, "the job's process to exit")
    assert paused_at < 120
    assert api.post(f"/v1/fine_tuning/jobs/{job_id}/resume")["status"] == "queued"
    job = cluster.wait_status(job_id, {"succeeded", "failed"}, 180)
    assert (job.status, job.attempt, job.step) == ("succeeded", 2, 120)
    assert resumed_step(cluster, job_id) == paused_at
    steps = [m.step for m in cluster.metric_rows(job_id) if m.kind == "train"]
    assert steps == list(range(1, 121))  # continued after the pause, not from 0


def test_a_worker_shut_down_hands_its_job_over(cluster: Cluster, api: Api) -> None:
    """SIGTERM (`docker stop`, a deploy): the job saves a checkpoint, goes back to the
    queue and is sent again at once; another worker continues it. No lease is lost."""
    job_id = api.create_job(**LONG_JOB)
    wait_for(lambda: cluster.job(job_id).step >= 3, 120, "the job to train a few steps")
    leaving = cluster.worker_holding(job_id)
    leaving.proc.terminate()
    assert leaving.proc.wait(60) == 0, leaving.text()[-3000:]
    job = cluster.wait_status(job_id, {"succeeded", "failed"}, 180)
    assert (job.status, job.attempt, job.lost_leases) == ("succeeded", 2, 0), job.error
    stopped = [e for e in cluster.events(job_id) if e.startswith("Worker shut down at step")]
    assert len(stopped) == 1
    assert resumed_step(cluster, job_id) == int(stopped[0].split()[5].rstrip(";"))
    assert cluster.worker_holding(job_id) is not leaving
    cluster.workers.remove(leaving)


def test_a_killed_worker_s_job_resumes_on_another(cluster: Cluster, api: Api) -> None:
    job_id = api.create_job(**LONG_JOB, checkpoint_every_steps=10)
    wait_for(lambda: cluster.job(job_id).step >= 12, 120, "a checkpoint to be saved")
    victim = cluster.worker_holding(job_id)
    victim.proc.kill()  # SIGKILL: no chance to checkpoint, requeue or stop its job
    victim.proc.wait()
    killed_at = cluster.job(job_id).step
    wait_for(lambda: not job_pids(job_id), 10, "the job's process to die with its worker")
    replacement = cluster.start_worker("w3")
    cluster.wait_ready(replacement)
    job = cluster.wait_status(job_id, {"succeeded", "failed"}, 180)
    assert (job.status, job.attempt, job.lost_leases) == ("succeeded", 2, 1), job.error
    resumed = resumed_step(cluster, job_id)
    assert 10 <= resumed <= killed_at and resumed % 10 == 0
    assert any(e.startswith("Worker lost (no heartbeat)") for e in cluster.events(job_id))
    steps = [m.step for m in cluster.metric_rows(job_id) if m.kind == "train"]
    # The second attempt continues at the checkpoint's next step, not at 1; the first one
    # logged every step up to the crash.
    second = len(steps) - (120 - resumed)
    assert steps[second:] == list(range(resumed + 1, 121))
    assert steps[:second] == list(range(1, second + 1)) and second >= resumed
