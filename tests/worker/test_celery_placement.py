"""Placing jobs of several GPUs end to end: the API (in-process) sends jobs over real Redis
to two real `sagetrain worker` processes sharing a real PostgreSQL database, one holding 1
process slot (`--slots 1`) and one holding 2 "GPUs" (`--gpus 0,1`: on this machine the jobs
still train on the CPU, but their processes get CUDA_VISIBLE_DEVICES as on a GPU machine).

What each job got is read from its process's own environment (SAGETRAIN_JOB_SLOTS,
CUDA_VISIBLE_DEVICES), sampled while it runs; when it ran, from its row. The engine may train
a 2-GPU job in one process or in two: placement is what is asserted here, not training.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery_cluster import Api, Cluster, job_pids, throwaway_postgres
from fastapi.testclient import TestClient
from s3_fixtures import *  # noqa: F403
from s3_fixtures import S3Server
from service_fixtures import redis_namespace

from api.main import create_app
from sage_core.broker import CeleryDispatcher
from sage_core.db import placement
from sage_core.db.keys import create_key
from sage_core.slots import JOB_SLOTS_ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
            s3_server: S3Server) -> Iterator[Cluster]:
    with throwaway_postgres() as db_url, redis_namespace() as (broker_url, prefix):
        root = tmp_path_factory.mktemp("placement")
        cluster = Cluster(root, db_url, broker_url, prefix, models_dir,
                          s3_server.env(prefix=root.name))
        try:
            cluster.wait_ready(cluster.start_worker("one", "--slots", "1"),
                               cluster.start_worker("two", "--gpus", "0,1"))
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[Api]:
    dispatcher = CeleryDispatcher(cluster.settings)
    with cluster.sessions.begin() as s:
        _, key = create_key(s, "placement-tests")
    app = create_app(cluster.settings, dispatcher=dispatcher)
    try:
        with TestClient(app) as client:
            yield Api(client, key)
    finally:
        dispatcher.close()


def job_slots(job_ids: list[str], name: str = JOB_SLOTS_ENV) -> dict[str, str]:
    """{job id: the variable `name`} of the jobs' processes running now."""
    found = {}
    for job_id in job_ids:
        for pid in job_pids(job_id):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # it just ended
                continue
            for entry in environ:
                if entry.startswith(f"{name}=".encode()):
                    found[job_id] = entry.split(b"=", 1)[1].decode()
    return found


def test_workers_register_their_slots(cluster: Cluster) -> None:
    with cluster.sessions() as s:
        workers = placement.live_workers(s, lease_seconds=60)
    assert [(w.id, w.slots, w.gpus) for w in workers] == [("one@test", 1, None),
                                                          ("two@test", 2, ["0", "1"])]


def test_jobs_get_the_slots_they_ask_for_and_never_share_one(cluster: Cluster,
                                                             api: Api) -> None:
    sizes = [2, 1, 2, 1]
    job_ids = [api.create_job(16, resources={"gpus": n}) for n in sizes]
    slots: dict[str, str] = {}
    devices: dict[str, str] = {}
    samples: list[dict[str, str]] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        now = job_slots(job_ids)
        samples.append(now)
        for job_id, taken in now.items():
            assert slots.setdefault(job_id, taken) == taken, "a job's slots changed"
        devices.update(job_slots(job_ids, "CUDA_VISIBLE_DEVICES"))
        if all(cluster.job(j).status in {"succeeded", "failed", "cancelled"} for j in job_ids):
            break
        time.sleep(0.25)
    jobs = {j: cluster.job(j) for j in job_ids}
    assert [jobs[j].status for j in job_ids] == ["succeeded"] * 4, (
        {j: (jobs[j].status, jobs[j].error) for j in job_ids}, cluster.logs())
    assert set(slots) == set(job_ids), f"not every job's process was seen: {slots}"
    worker = {j: cluster.worker_holding(j).name for j in job_ids}
    for job_id, n in zip(job_ids, sizes, strict=True):
        assert len(slots[job_id].split(",")) == n, (job_id, slots[job_id])
        if n == 2:
            assert (worker[job_id], slots[job_id]) == ("two", "0,1")
        if worker[job_id] == "two":  # every one of its GPUs, and only those
            assert devices.get(job_id) == slots[job_id], (job_id, devices)
    assert any(len(now) >= 2 for now in samples), "no two jobs ever ran at once"
    # Seen at the same moment: no slot of a worker in two jobs' environments.
    for now in samples:
        held = [(worker[j], s) for j, taken in now.items() for s in taken.split(",")]
        assert len(held) == len(set(held)), f"a slot was shared: {now}"
    # And over the jobs' whole runs: two jobs holding one slot never ran at the same time.
    for a, b in itertools.combinations(job_ids, 2):
        shared = set(slots[a].split(",")) & set(slots[b].split(","))
        if worker[a] != worker[b] or not shared:
            continue
        first, second = sorted((jobs[a], jobs[b]), key=lambda job: job.started_at)
        assert first.finished_at is not None and second.started_at is not None
        assert first.finished_at <= second.started_at, f"{a} and {b} shared slots {shared}"


def test_a_job_bigger_than_every_worker_waits_then_fails(cluster: Cluster, api: Api) -> None:
    job_id = api.create_job(16, resources={"gpus": 3})
    job = cluster.wait_status(job_id, {"failed", "succeeded"}, 60)
    assert job.error is not None and job.error["code"] == "insufficient_gpus", job.error
    assert job.error["message"] == ("the job asks for 3 GPUs, but the largest live worker "
                                    "has 2; none with enough joined in 6 s")
    waiting = [e for e in cluster.events(job_id) if e.startswith("Waiting for a worker")]
    assert waiting == ["Waiting for a worker with 3 GPUs: the largest live worker has 2; "
                       "the job fails if none joins within 6 s"]  # once, not every round
    assert job.attempt == 0 and not job_pids(job_id)  # no worker ever started it


def test_a_worker_that_stops_leaves_the_registry(cluster: Cluster) -> None:
    one = next(w for w in cluster.workers if w.name == "one")
    one.stop()
    with cluster.sessions() as s:
        assert [w.id for w in placement.live_workers(s, lease_seconds=60)] == ["two@test"]
