"""Seq2seq through the HTTP API against a live `sagetrain serve`: a number-phrase translation
file uploaded (task recognised, statistics), a job whose task comes from the file trained
to the end on a tiny T5, its metrics rows with valid_bleu and valid_chrf, its sample events,
and the checkpoint downloaded and loaded with plain transformers; a seq2seq file given to a
text-classification job is a 400 that names both tasks."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import LiveServer
from process_helpers import wait_for

from sage_core.testing import number_pairs

pytestmark = pytest.mark.slow

MODEL = "tiny-t5"


def pairs_file(n: int, seed: int) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in number_pairs(n, seed=seed)).encode()


@pytest.fixture(scope="module")
def seq2seq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`sagetrain serve` whose models folder holds a tiny random T5 that knows the number
    words of both languages."""
    from sage_core.testing import build_tiny_t5, number_words

    models = tmp_path_factory.mktemp("seq2seq-models")
    build_tiny_t5(models / MODEL, words=number_words())
    with LiveServer.start(tmp_path_factory.mktemp("seq2seq-live"), models) as server:
        yield server


def test_seq2seq_job_over_http(seq2seq_server: LiveServer, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{seq2seq_server.url}/v1", api_key=seq2seq_server.key,
                           max_retries=0)
    train = client.files.create(file=("numbers.jsonl", pairs_file(64, 0)),
                                purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", pairs_file(8, 1)), purpose="fine-tune")
    assert train.status == "processed"
    stats = train.to_dict()["stats"]
    assert stats["task"] == "seq2seq" and stats["examples"] == 64
    assert set(stats["source_characters"]) == {"min", "mean", "max"}

    with seq2seq_server.client() as http:
        wrong = http.post("/v1/fine_tuning/jobs", json={
            "model": MODEL, "training_file": train.id, "task": "text-classification"})
        assert wrong.status_code == 400, wrong.text
        message = wrong.json()["error"]["message"]
        assert "seq2seq" in message and "text-classification" in message
        # a model that cannot do the task is refused when the job is created, not later
        for model, hyperparameters in (("sentence-transformers/all-MiniLM-L6-v2", {}),
                                       (MODEL, {"architecture": "encoder-decoder"})):
            unfit = http.post("/v1/fine_tuning/jobs", json={
                "model": model, "training_file": train.id, "hyperparameters": hyperparameters})
            assert unfit.status_code == 400, unfit.text
            assert unfit.json()["error"]["param"] == "hyperparameters.architecture"
            assert model in unfit.json()["error"]["message"]

        created = http.post("/v1/fine_tuning/jobs", json={
            "model": MODEL, "training_file": train.id, "validation_file": valid.id,
            "hyperparameters": {"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3,
                                "max_seq_length": 32, "num_beams": 2}})
        assert created.status_code == 200, created.text
        job = created.json()
        assert job["task"] == "seq2seq"  # from the file
        assert job["hyperparameters"]["num_beams"] == 2

        def done() -> dict | None:
            current = http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
            return current if current["status"] in ("succeeded", "failed", "cancelled") \
                else None

        finished = wait_for(done, 300, "the seq2seq job to finish", interval=0.5)
        assert finished["status"] == "succeeded", (finished["error"],
                                                   seq2seq_server.log_text()[-4000:])
        rows = http.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics").json()["data"]
        evaluations = [r for r in rows if "valid_loss" in r]
        assert [r["step"] for r in evaluations] == [4, 8]  # 64 examples, batch 16, 2 epochs
        assert all(0 <= r["valid_bleu"] <= 100 and 0 <= r["valid_chrf"] <= 100
                   for r in evaluations)
        events = http.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                          params={"limit": 100}).json()["data"]
        samples = [e for e in events if e["message"].startswith("Sample at step")]
        assert len(samples) == 3 * 2
        assert {"prompt", "reference", "answer"} <= set(samples[0]["data"])

        checkpoints = http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
        archive = http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints/"
                           f"{checkpoints[0]['id']}/content")
        assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    (folder,) = tmp_path.iterdir()

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.generation_config.num_beams == 2
    inputs = tokenizer(["three hundred and twelve"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8)
    assert out.shape[0] == 1 and out.shape[1] > 1
