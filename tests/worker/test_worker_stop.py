"""Issue 18: `sagetrain worker` stops on SIGTERM within SAGETRAIN_SHUTDOWN_TIMEOUT_SECONDS
even when its job does not stop (here: a job process frozen with SIGSTOP, as one stuck in a
collective or on a dead file system would be): the job's process is killed at the deadline,
the job goes back to the queue rather than failing, and another worker resumes it from its
last checkpoint. Before, the job had max(SAGETRAIN_CANCEL_GRACE_SECONDS, the lease: 120 s by
default) to stop, and was then failed as crashed."""

from __future__ import annotations

import os
import re
import signal
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
from sage_core.broker import CeleryDispatcher
from sage_core.db.keys import create_key

pytestmark = pytest.mark.slow

DEADLINE = 10.0
SLACK = 5.0
# A lease far longer than the deadline: the old grace (max(cancel grace, lease)) was 60 s.
STOPPING = {"SAGETRAIN_SHUTDOWN_TIMEOUT_SECONDS": str(DEADLINE), "SAGETRAIN_LEASE_SECONDS": "60"}
LONG_JOB = {"n_rows": 150 * 64, "batch_size": 64, "validation_split": 0}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
            s3_server: S3Server) -> Iterator[Cluster]:
    with throwaway_postgres() as db_url, redis_namespace() as (broker_url, prefix):
        root = tmp_path_factory.mktemp("stopping")
        cluster = Cluster(root, db_url, broker_url, prefix, models_dir,
                          s3_server.env(prefix=root.name))
        cluster.worker_env.update(STOPPING)
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[Api]:
    dispatcher = CeleryDispatcher(cluster.settings)
    with cluster.sessions.begin() as s:
        _, key = create_key(s, "stopping-tests")
    with TestClient(create_app(cluster.settings, dispatcher=dispatcher)) as client:
        yield Api(client, key)
    dispatcher.close()


@pytest.mark.timeout(400)
def test_sigterm_stops_a_worker_whose_job_is_stuck_within_the_deadline(
        cluster: Cluster, api: Api) -> None:
    first = cluster.start_worker("s1")
    cluster.wait_ready(first)
    job_id = api.create_job(**LONG_JOB, checkpoint_every_steps=10)
    wait_for(lambda: cluster.job(job_id).step >= 12, 120, "a checkpoint to be saved")
    stuck = job_pids(job_id)
    assert stuck
    for pid in stuck:
        os.kill(pid, signal.SIGSTOP)

    started = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    try:
        first.proc.wait(DEADLINE + SLACK)
    except Exception:
        pytest.fail(f"the worker was still running {DEADLINE + SLACK:.0f} s after SIGTERM:\n"
                    f"{first.text()[-3000:]}")
    took = time.monotonic() - started
    print(f"exited {took:.1f} s after SIGTERM")  # shown by pytest -rP
    assert first.proc.returncode == 0, first.text()[-3000:]
    assert took < DEADLINE + SLACK
    wait_for(lambda: not job_pids(job_id), 5, "the stuck job's process to be gone")
    assert "for job " + job_id + " to checkpoint" in first.text()
    job = cluster.job(job_id)
    assert job.status == "queued", (job.status, job.error)

    second = cluster.start_worker("s2")
    cluster.wait_ready(second)
    job = cluster.wait_status(job_id, {"succeeded", "failed"}, 240)
    assert job.status == "succeeded", job.error
    (resumed,) = [int(m.group(1)) for e in cluster.events(job_id)
                  if (m := re.fullmatch(r"resumed from step (\d+)", e))]
    assert resumed >= 10
    second.stop(DEADLINE + SLACK)
    assert second.proc.returncode == 0


@pytest.mark.timeout(300)
def test_a_second_sigterm_stops_the_worker_at_once(cluster: Cluster, api: Api) -> None:
    worker = cluster.start_worker("s3")
    cluster.wait_ready(worker)
    job_id = api.create_job(**LONG_JOB)
    wait_for(lambda: cluster.job(job_id).step >= 3 and job_pids(job_id), 120,
             "the job to train a few steps")
    for pid in job_pids(job_id):
        os.kill(pid, signal.SIGSTOP)  # so that the first SIGTERM has something to wait for
    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert worker.proc.poll() is None
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(DEADLINE) == 1, worker.text()[-3000:]
    assert time.monotonic() - started < 3.0
    wait_for(lambda: not job_pids(job_id), 5, "the job's process to be killed")
    assert "SIGTERM again: exiting now" in worker.text()
