"""The official `openai` client, pointed at `sagetrain serve`, parses every answer."""

from __future__ import annotations

import pytest
from api_helpers import LiveServer
from process_helpers import wait_for
from sample_data import rows

pytestmark = pytest.mark.slow


def test_openai_client_round_trip(live_server: LiveServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=live_server.key,
                           max_retries=0)
    uploaded = client.files.create(file=("train.jsonl", rows(32, 3)), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.status == "processed"
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    assert uploaded.id in [f.id for f in client.files.list()]

    job = client.fine_tuning.jobs.create(
        model="tiny-bert", training_file=uploaded.id, suffix="sdk", seed=5,
        hyperparameters={"n_epochs": 1, "batch_size": 8}, metadata={"from": "openai"})
    assert job.status in ("queued", "running") and job.seed == 5
    assert job.hyperparameters.n_epochs == 1 and job.metadata == {"from": "openai"}
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=5)]

    def done() -> object:
        current = client.fine_tuning.jobs.retrieve(job.id)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    finished = wait_for(done, 180, "the job to finish", interval=0.5)
    assert finished.status == "succeeded", finished.error
    assert finished.fine_tuned_model and finished.result_files

    events = client.fine_tuning.jobs.list_events(job.id, limit=50)
    assert events.data[0].object == "fine_tuning.job.event"
    assert events.data[0].message == "The job has successfully completed"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoints.data[0].step_number == 4
    assert checkpoints.data[0].fine_tuned_model_checkpoint.endswith(":ckpt-step-4")
    assert checkpoints.data[0].metrics.train_loss is not None

    second = client.fine_tuning.jobs.create(model="tiny-bert", training_file=uploaded.id)
    cancelled = client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled"
    models = [m.id for m in client.models.list()]
    assert "tiny-bert" in models and finished.fine_tuned_model in models

    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(model="tiny-bert", training_file=uploaded.id,
                                       hyperparameters={"n_epochs": 0})
    assert info.value.param == "hyperparameters.n_epochs"  # type: ignore[attr-defined]
    bad = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-st-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.files.list()
