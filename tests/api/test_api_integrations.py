"""OpenAI's `integrations` on a job: validated at creation (a 400 naming the field), shown
back as given, and reported to by the real runner: TensorBoard's events come back as a
result file, MLflow's run is in the operator's store, W&B's offline run holds the metrics.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from api_helpers import LiveServer, Service
from process_helpers import wait_for
from tracking_helpers import read_wandb_run, tensorboard_scalars
from worker_helpers import spam_rows

from worker.runner import run_job

HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 8, "max_seq_length": 16}
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _post(service: Service, **body: Any) -> Any:
    body.setdefault("training_file", service.upload()["id"])
    body.setdefault("model", "tiny-bert")
    return service.client.post("/v1/fine_tuning/jobs", headers=service.auth(), json=body)


@pytest.mark.parametrize(("integrations", "param", "words"), [
    ([{"type": "comet"}], "integrations[0].type", "wandb"),
    ([{"type": "wandb"}], "integrations[0].wandb", "required"),
    ([{"type": "wandb", "wandb": {}}], "integrations[0].wandb.project", "Missing"),
    ([{"type": "tensorboard"}, {"type": "wandb", "wandb": {"project": "p", "team": "x"}}],
     "integrations[1].wandb.team", "Unrecognized"),
    ([{"type": "wandb", "wandb": {"project": "p", "tags": ["x" * 65]}}],
     "integrations[0].wandb.tags", "64"),
    ([{"type": "wandb", "wandb": {"project": "a/b"}}], "integrations[0].wandb.project", ""),
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "file:///etc"}}],
     "integrations[0].mlflow.tracking_uri", "http"),
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "sqlite:////tmp/x.db"}}],
     "integrations[0].mlflow.tracking_uri", "http"),
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "/srv/mlruns"}}],
     "integrations[0].mlflow.tracking_uri", "http"),
    ([{"type": "tensorboard", "wandb": {"project": "p"}}], "integrations[0].wandb",
     "does not belong"),
    ([{"type": "tensorboard"}, {"type": "tensorboard"}], "integrations[1].type", "twice"),
    ([{"type": "mlflow"}], "integrations[0].mlflow.tracking_uri", "SAGETRAIN_MLFLOW"),
    ("wandb", "integrations", ""),
    # issue 17 item 4: a user's MLflow server is checked as a webhook URL is
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "http://" + "a" * 64 + ".org"}}],
     "integrations[0].mlflow.tracking_uri", "valid domain name"),
    ([{"type": "tensorboard"},
      {"type": "mlflow", "mlflow": {"tracking_uri": "http://169.254.169.254/"}}],
     "integrations[1].mlflow.tracking_uri", "ALLOW_PRIVATE_TARGETS"),
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "http://[::ffff:127.0.0.1]:5000"}}],
     "integrations[0].mlflow.tracking_uri", "link-local"),
])
def test_invalid_integrations_are_400_naming_the_field(
        service: Service, integrations: Any, param: str, words: str) -> None:
    response = _post(service, integrations=integrations)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert words in error["message"], error
    assert service.dispatcher.dispatched == []


def test_integrations_are_shown_as_given(service: Service) -> None:
    service.settings.mlflow_tracking_uri = "http://127.0.0.1:5000"
    given = [{"type": "wandb", "wandb": {"project": "spam", "name": "run 1", "entity": "team",
                                         "tags": ["a", "b"]}},
             {"type": "mlflow", "mlflow": {"experiment": "spam"}},
             {"type": "tensorboard"}]
    job = service.create_job(integrations=given)
    shown = [{"type": "wandb", "wandb": {"project": "spam", "name": "run 1", "entity": "team",
                                         "tags": ["a", "b"]}},
             {"type": "mlflow", "mlflow": {"tracking_uri": None, "experiment": "spam"}},
             {"type": "tensorboard", "tensorboard": {}}]
    assert job["integrations"] == shown
    again = service.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=service.auth())
    assert again.json()["integrations"] == shown
    listed = service.client.get("/v1/fine_tuning/jobs", headers=service.auth()).json()["data"]
    assert listed[0]["integrations"] == shown
    assert service.create_job()["integrations"] == []


def _run(service: Service, integrations: list[dict[str, Any]]) -> dict[str, Any]:
    """A job on the tiny model with a validation file, created through the API and run by
    the real runner; the job afterwards."""
    train = service.upload(spam_rows(32))["id"]
    valid = service.upload(spam_rows(16, seed=1), name="valid.jsonl")["id"]
    job = service.create_job(training_file=train, validation_file=valid,
                             hyperparameters=HYPERPARAMETERS, integrations=integrations)
    settings = service.settings.model_copy(update={"device": "cpu"})
    assert run_job(job["id"], settings, worker_id="w1") == "succeeded"
    response = service.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=service.auth())
    return response.json()


def _events(service: Service, job_id: str) -> list[dict[str, Any]]:
    response = service.client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100",
                                  headers=service.auth())
    return response.json()["data"]


@SQLITE_ONLY
def test_tensorboard_events_are_a_result_file(service: Service, tmp_path: Path) -> None:
    job = _run(service, [{"type": "tensorboard"}])
    assert len(job["result_files"]) == 2
    files = [service.client.get(f"/v1/files/{i}", headers=service.auth()).json()
             for i in job["result_files"]]
    assert [f["filename"] for f in files] == ["step_metrics.csv", "tensorboard.tar.gz"]
    assert files[1]["purpose"] == "fine-tune-results"
    content = service.client.get(f"/v1/files/{files[1]['id']}/content",
                                 headers=service.auth()).content
    with tarfile.open(fileobj=io.BytesIO(content)) as tar:
        tar.extractall(tmp_path, filter="data")
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert [step for step, _ in scalars["train_loss"]] == list(range(1, 9))
    assert [step for step, _ in scalars["valid_loss"]] == [4, 8]
    assert scalars["sensitivity/overall/mean"][0][1] > 0
    assert not [e for e in _events(service, job["id"]) if e["level"] == "warn"
                and (e["data"] or {}).get("code") == "integration_failed"]


@SQLITE_ONLY
def test_mlflow_run_goes_to_the_operators_store(service: Service, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    service.settings.mlflow_tracking_uri = uri
    job = _run(service, [{"type": "mlflow", "mlflow": {"experiment": "spam"}}])
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("spam")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == job["id"]
    assert run.data.tags["sagetrain.job_id"] == job["id"]
    assert run.data.params["learning_rate"] == str(job["hyperparameters"]["learning_rate"])
    assert run.data.params["optimizer"] == "sage"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")][:2] \
        == [4, 8]
    assert run.data.metrics["sensitivity/overall/mean"] > 0
    assert "valid_accuracy" in run.data.metrics
    assert len(job["result_files"]) == 1


@SQLITE_ONLY
def test_wandb_offline_run_holds_the_metrics(service: Service, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    job = _run(service, [{"type": "wandb", "wandb": {"project": "spam", "name": "first",
                                                     "tags": ["tiny"]}}])
    # WANDB_DIR unset: under the data folder
    runs = list((service.settings.data_dir / "wandb" / "wandb").glob(
        f"offline-run-*-{job['id']}/run-{job['id']}.wandb"))
    assert len(runs) == 1, runs
    run = read_wandb_run(runs[0])
    assert run["project"] == "spam" and run["name"] == "first"
    assert set(run["tags"]) == {"tiny", job["id"]}
    assert run["config"]["learning_rate"] == job["hyperparameters"]["learning_rate"]
    train_steps = [row["_step"] for row in run["history"] if "train_loss" in row]
    assert train_steps == list(range(1, 9))
    assert any("valid_loss" in row for row in run["history"])
    assert run["summary"]["sensitivity/overall/mean"] > 0
    assert run["summary"]["status"] == "succeeded"
    assert not [e for e in _events(service, job["id"]) if e["level"] == "warn"
                and (e["data"] or {}).get("code") == "integration_failed"]


@SQLITE_ONLY
def test_sweep_children_report_too(service: Service, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    service.settings.mlflow_tracking_uri = uri
    train = service.upload(spam_rows(32))["id"]
    valid = service.upload(spam_rows(16, seed=1), name="valid.jsonl")["id"]
    parent = service.create_job(training_file=train, validation_file=valid,
                                hyperparameters=HYPERPARAMETERS,
                                sweep={"learning_rate": [1e-4, 2e-4]},
                                integrations=[{"type": "mlflow"}])
    children = [run["job_id"] for run in parent["sweep"]["runs"]]
    for child in children:
        shown = service.client.get(f"/v1/fine_tuning/jobs/{child}",
                                   headers=service.auth()).json()
        assert shown["integrations"] == [{"type": "mlflow", "mlflow": {
            "tracking_uri": None, "experiment": None}}]
    settings = service.settings.model_copy(update={"device": "cpu"})
    assert run_job(children[0], settings, worker_id="w1") == "succeeded"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sagetrain")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["sagetrain.job_id"] == children[0]
    assert run.data.tags["sagetrain.parent_job_id"] == parent["id"]
    assert run.data.params["learning_rate"] == "0.0001"


def test_client_and_cli(in_process: Service, capsys: pytest.CaptureFixture[str]) -> None:
    from sagetrain.cli import main
    from sagetrain.client import Client

    service = in_process
    service.settings.mlflow_tracking_uri = "http://127.0.0.1:5000"
    file_id = service.upload()["id"]
    with Client() as client:
        job = client.create_job("tiny-bert", file_id, integrations=[{"type": "tensorboard"}])
    assert job["integrations"] == [{"type": "tensorboard", "tensorboard": {}}]
    capsys.readouterr()
    assert main(["jobs", "create", "--model", "tiny-bert", "--training-file", file_id,
                 "--integration", "tensorboard", "--integration", "wandb=spam",
                 "--integration", "mlflow"]) == 0
    shown = json.loads(capsys.readouterr().out)["integrations"]
    assert shown == [{"type": "tensorboard", "tensorboard": {}},
                     {"type": "wandb", "wandb": {"project": "spam", "name": None,
                                                 "entity": None, "tags": []}},
                     {"type": "mlflow", "mlflow": {"tracking_uri": None, "experiment": None}}]
    assert main(["jobs", "create", "--model", "tiny-bert", "--training-file", file_id,
                 "--integration", '{"type": "wandb", "wandb": {"project": "p", "tags": ["a"]}}',
                 "--integration", "mlflow=https://mlflow.example.com"]) == 0
    shown = json.loads(capsys.readouterr().out)["integrations"]
    assert shown[0]["wandb"]["tags"] == ["a"]
    assert shown[1]["mlflow"]["tracking_uri"] == "https://mlflow.example.com"
    assert main(["jobs", "create", "--model", "tiny-bert", "--training-file", file_id,
                 "--integration", "mlflow=file:///etc"]) == 1
    error = capsys.readouterr().err
    assert "integrations[0].mlflow.tracking_uri" in error and "http" in error
    with pytest.raises(SystemExit):
        main(["jobs", "create", "--model", "tiny-bert", "--training-file", file_id,
              "--integration", "comet"])
    assert "wandb=PROJECT" in capsys.readouterr().err


@pytest.mark.slow
def test_openai_sdk_through_serve(tmp_path: Path, models_dir: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`sagetrain serve` (its executor runs the job in a process of its own), driven by the
    official client: W&B without credentials is a warning event, TensorBoard's archive a
    result file the client downloads."""
    openai = pytest.importorskip("openai")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # nor a login on this machine
    with LiveServer.start(tmp_path, models_dir) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
        train = client.files.create(file=("train.jsonl", spam_rows(32)), purpose="fine-tune")
        valid = client.files.create(file=("valid.jsonl", spam_rows(16, seed=1)),
                                    purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny-bert", training_file=train.id, validation_file=valid.id,
            hyperparameters=HYPERPARAMETERS,
            integrations=[{"type": "wandb", "wandb": {"project": "spam"}},
                          {"type": "tensorboard"}])  # type: ignore[list-item]
        assert job.integrations is not None and job.integrations[0].wandb.project == "spam"

        def done() -> Any:
            current = client.fine_tuning.jobs.retrieve(job.id)
            return current if current.status in ("succeeded", "failed", "cancelled") else None

        finished = wait_for(done, 180, "the job to finish", interval=0.5)
        assert finished.status == "succeeded", (finished.error, server.log_text()[-3000:])
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        warned = [e for e in events if e.level == "warn" and "integration" in e.message]
        assert len(warned) == 1 and warned[0].message.startswith(
            "wandb integration stopped (start): UsageError: "), [e.message for e in warned]
        archive = client.files.content(finished.result_files[1]).content
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp_path / "events", filter="data")
        scalars = tensorboard_scalars(tmp_path / "events" / "tensorboard")
        assert [step for step, _ in scalars["train_loss"]] == list(range(1, 9))
