"""The runner's integrations when things go wrong: a tool that cannot start (server
unreachable, library missing) or that raises while logging becomes a warning event and is
dropped, and the job still succeeds; a paused job's later attempt continues the same MLflow
run; a failed job ends its runs as failed."""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tracking_helpers import tensorboard_scalars
from worker_helpers import WorkerEnv

from sage_core.artifacts import LocalArtifactStore
from sage_core.db import transitions
from sage_core.db.models import File, Job, JobEvent
from sage_core.integration_specs import Integration
from worker import runner
from worker.runner import JobRunner, run_job
from worker.tracking import RunInfo, Trackers, summary_of
from worker.tracking.tensorboard_tracker import TensorboardTracker

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _job(env: WorkerEnv, integrations: list[dict[str, Any]], **hyperparameters: Any) -> str:
    job_id = env.add_job(**hyperparameters)
    with env.sessions.begin() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.spec = {**job.spec, "integrations": integrations}
    return job_id


def _warnings(env: WorkerEnv, job_id: str) -> list[JobEvent]:
    """The job's warning events about its integrations."""
    with env.sessions() as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                JobEvent.level == "warn"))
        return [row for row in rows if (row.data or {}).get("code") == "integration_failed"]


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@SQLITE_ONLY
def test_unreachable_mlflow_server_is_a_warning(env: WorkerEnv,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "operator-secret")
    env.settings.allow_private_targets = True  # the closed port is on 127.0.0.1
    uri = f"http://127.0.0.1:{_closed_port()}"
    job_id = _job(env, [{"type": "mlflow", "mlflow": {"tracking_uri": uri}},
                        {"type": "tensorboard"}])
    started = time.monotonic()
    assert run_job(job_id, env.settings, worker_id="w1") == "succeeded"
    assert time.monotonic() - started < 60
    (warning,) = _warnings(env, job_id)
    assert warning.data == {"code": "integration_failed", "integration": "mlflow",
                            "phase": "start"}
    assert warning.message.startswith("mlflow integration stopped (start): ")
    assert "the job goes on without it" in warning.message
    # the operator's credential is not sent to a user's server
    assert "MLFLOW_TRACKING_TOKEN" not in os.environ
    # the other integration went on
    job = env.job(job_id)
    assert len(job.result_file_ids) == 2


@SQLITE_ONLY
def test_missing_library_is_a_warning(env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    job_id = _job(env, [{"type": "wandb", "wandb": {"project": "p"}}])
    assert run_job(job_id, env.settings, worker_id="w1") == "succeeded"
    (warning,) = _warnings(env, job_id)
    assert warning.data is not None and warning.data["integration"] == "wandb"
    assert warning.message == (
        "wandb integration stopped (start): ModuleNotFoundError: a package it needs is not "
        "installed on this worker (wandb); install sagetrain[tracking]; the job goes on "
        "without it")


@SQLITE_ONLY
def test_a_tool_that_raises_while_logging_is_dropped(env: WorkerEnv,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = TensorboardTracker.log

    def failing(self: TensorboardTracker, step: int, metrics: dict[str, float]) -> None:
        calls.append(step)
        if step == 3:
            raise OSError("disk full")
        original(self, step, metrics)

    monkeypatch.setattr(TensorboardTracker, "log", failing)
    job_id = _job(env, [{"type": "tensorboard"}])
    assert run_job(job_id, env.settings, worker_id="w1") == "succeeded"
    assert calls == [1, 2, 3]  # no call after the failure
    (warning,) = _warnings(env, job_id)
    assert warning.message == ("tensorboard integration stopped (log): OSError: disk full; "
                               "the job goes on without it")
    assert len(env.job(job_id).result_file_ids) == 1  # no archive of a dropped tool


@SQLITE_ONLY
def test_paused_job_continues_its_mlflow_run(env: WorkerEnv, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env.settings.mlflow_tracking_uri = uri
    job_id = _job(env, [{"type": "mlflow", "mlflow": {}}, {"type": "tensorboard"}])
    monkeypatch.setattr(runner, "STOP_POLL_SECONDS", 0.0)
    original = JobRunner._on_metrics

    def pause_at_3(self: JobRunner, row: dict[str, Any]) -> None:
        original(self, row)
        if row.get("step") == 3 and "train_loss" in row:
            with self.sessions.begin() as s:
                transitions.request_pause(s, self.job_id)

    monkeypatch.setattr(JobRunner, "_on_metrics", pause_at_3)
    assert run_job(job_id, env.settings, worker_id="w1") == "paused"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sagetrain")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["sagetrain.status"] == "stopped"
    monkeypatch.setattr(JobRunner, "_on_metrics", original)
    # the next attempt runs on another machine: nothing of this one's run folder is there
    shutil.rmtree(env.settings.data_dir / "runs" / job_id)
    with env.sessions.begin() as s:
        transitions.resume(s, job_id)
    assert run_job(job_id, env.settings, worker_id="w2") == "succeeded"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "train_loss")})
    assert steps == list(range(1, 9))
    assert _warnings(env, job_id) == []
    # TensorBoard's events of both attempts, once each
    job = env.job(job_id)
    with env.sessions() as s:
        archive = s.get(File, job.result_file_ids[1])
        assert archive is not None
    with tarfile.open(env.store.local_path(archive.storage_key)) as tar:
        tar.extractall(tmp_path / "events", filter="data")
    scalars = tensorboard_scalars(tmp_path / "events" / "tensorboard")
    assert [step for step, _ in scalars["train_loss"]] == list(range(1, 9))
    assert not env.store.exists(f"{job.artifact_prefix}/tensorboard")


@SQLITE_ONLY
def test_failed_job_ends_its_runs_as_failed(env: WorkerEnv, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env.settings.mlflow_tracking_uri = uri
    job_id = _job(env, [{"type": "mlflow", "mlflow": {"experiment": "x"}},
                        {"type": "tensorboard"}], model="no-such-model")
    assert run_job(job_id, env.settings, worker_id="w1") == "failed"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("x")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["sagetrain.status"] == "failed"
    assert env.job(job_id).result_file_ids == []
    assert _warnings(env, job_id) == []


@SQLITE_ONLY
def test_a_two_rank_job_reports_once(env: WorkerEnv, tmp_path: Path) -> None:
    """The ranks' rows reach the runner's process (rank 0's, over a pipe): one run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env.settings.mlflow_tracking_uri = uri
    job_id = _job(env, [{"type": "mlflow", "mlflow": {}}])
    with env.sessions.begin() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.spec = {**job.spec, "resources": {"gpus": 2, "strategy": "ddp"}}
    assert run_job(job_id, env.settings, worker_id="w1") == "succeeded"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sagetrain")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["resources.gpus"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 9))
    assert run.data.metrics["sensitivity/overall/mean"] > 0


class Broken:
    name = "broken"

    def __init__(self, run: RunInfo) -> None:
        self.closed = False

    def start(self, integration: Integration, hyperparameters: dict[str, Any]) -> None:
        return None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        raise RuntimeError("server said 500\nwith a long body")

    def finish(self, summary: dict[str, float], *, status: str) -> Path | None:
        raise AssertionError("never called once dropped")

    def close(self) -> None:
        self.closed = True


def test_trackers_report_a_failure_once_and_drop_the_tool(tmp_path: Path) -> None:
    from sage_core.settings import Settings

    info = RunInfo(job_id="ftjob-x", model="m", task="t", parent_job_id=None,
                   settings=Settings(data_dir=tmp_path), work_dir=tmp_path,
                   store=LocalArtifactStore(tmp_path / "store"), artifact_prefix="jobs/x")
    warned: list[tuple[str, dict[str, Any]]] = []
    trackers = Trackers(info, lambda message, data: warned.append((message, data)))
    broken = Broken(info)
    trackers._active.append(broken)  # noqa: SLF001 - a tool that fails on its own terms
    trackers.log({"step": 1, "train_loss": 0.5})
    trackers.log({"step": 2, "train_loss": 0.4})
    assert trackers.finish({}, status="succeeded") == []
    assert broken.closed
    assert warned == [("broken integration stopped (log): RuntimeError: server said 500; the "
                       "job goes on without it",
                       {"code": "integration_failed", "integration": "broken",
                        "phase": "log"})]


def test_summary_flattens_the_sensitivity_report() -> None:
    report = {"overall": {"count": 10, "mean": 2e-6, "median": 1e-6, "sampled": False,
                          "fraction_below": {"1e-08": 0.1, "1e-06": 0.5},
                          "histogram_log10": {"counts": [1, 2]}},
              "blocks": {"encoder.layer.0": {"count": 5, "mean": 1e-6, "fraction_zero": 0.0,
                                             "fraction_below": {"1e-08": 0.2}}}}
    summary = summary_of({"valid_loss": 0.3, "valid_accuracy": 1, "note": "x",
                          "valid_f1": float("nan")}, report)
    assert summary == {
        "valid_loss": 0.3, "valid_accuracy": 1.0,
        "sensitivity/overall/count": 10.0, "sensitivity/overall/mean": 2e-6,
        "sensitivity/overall/median": 1e-6,
        "sensitivity/overall/fraction_below/1e-08": 0.1,
        "sensitivity/overall/fraction_below/1e-06": 0.5,
        "sensitivity/blocks/encoder.layer.0/mean": 1e-6,
        "sensitivity/blocks/encoder.layer.0/fraction_zero": 0.0,
        "sensitivity/blocks/encoder.layer.0/fraction_below/1e-08": 0.2}
    assert summary_of({}, None) == {}


@SQLITE_ONLY
def test_a_users_mlflow_server_on_a_private_address_is_not_called(
        env: WorkerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17 item 4: a user's tracking_uri is checked like a webhook's URL, so a job
    cannot make a worker call its own network (the cloud metadata service here)."""
    import socket

    called: list[Any] = []
    monkeypatch.setattr(socket, "create_connection",
                        lambda *a, **k: called.append(a) or (_ for _ in ()).throw(OSError()))
    job_id = _job(env, [{"type": "mlflow",
                         "mlflow": {"tracking_uri": "http://169.254.169.254/mlflow"}}])
    assert run_job(job_id, env.settings, worker_id="w1") == "succeeded"
    (warning,) = _warnings(env, job_id)
    assert "169.254.169.254" in warning.message and "does not call" in warning.message
    assert called == []
