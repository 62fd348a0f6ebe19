"""A job continues on another machine: its run folder there is empty, so the runner brings
the newest checkpoint (with its resume state) from the shared S3-compatible store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import *  # noqa: F403
from s3_fixtures import S3Server
from sqlalchemy import select
from worker_helpers import WorkerEnv

from sage_core.artifacts_s3 import S3ArtifactStore
from sage_core.db.models import JobMetric
from sage_core.settings import Settings
from worker import runner
from worker.runner import JobRunner, run_job


@pytest.fixture
def s3_env(db_url: str, tmp_path: Path, models_dir: Path,
           s3_server: S3Server) -> Iterator[WorkerEnv]:
    settings = Settings(data_dir=tmp_path / "machine-a", database_url=db_url,
                        models_dir=models_dir, device="cpu",
                        artifacts_url=f"s3://{s3_server.bucket}/{tmp_path.name}",
                        s3_endpoint_url=s3_server.endpoint_url)
    env = WorkerEnv(settings)
    yield env
    env.engine.dispose()


def test_resumes_from_the_store_on_another_machine(
        s3_env: WorkerEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert isinstance(s3_env.store, S3ArtifactStore)
    job_id = s3_env.add_job(checkpoint_every_steps=2)
    original = JobRunner._on_metrics

    def stop_at_step_4(self: JobRunner, row: dict[str, Any]) -> None:
        original(self, row)
        if row.get("step") == 4 and "train_loss" in row:
            runner.shutdown_requested.set()  # as SIGTERM would: checkpoint, requeue

    monkeypatch.setattr(runner, "STOP_POLL_SECONDS", 0.0)
    monkeypatch.setattr(JobRunner, "_on_metrics", stop_at_step_4)
    try:
        assert run_job(job_id, s3_env.settings) == "queued"
    finally:
        runner.shutdown_requested.clear()
    monkeypatch.setattr(JobRunner, "_on_metrics", original)
    assert s3_env.job(job_id).step == 5
    shutil.rmtree(s3_env.settings.data_dir / "runs" / job_id)  # a machine with nothing local

    other = s3_env.settings.model_copy(update={"data_dir": tmp_path / "machine-b"})
    assert run_job(job_id, other) == "succeeded"
    events = s3_env.events(job_id)
    assert "resumed from step 5" in events, events
    with s3_env.sessions() as s:
        steps = list(s.scalars(select(JobMetric.step).where(
            JobMetric.job_id == job_id, JobMetric.kind == "train").order_by(JobMetric.id)))
    assert steps == list(range(1, 9))  # 1-5 on machine a, 6-8 on machine b
    assert not (tmp_path / "machine-b" / "runs" / job_id).exists()  # cleaned up when done
