"""sagetrain.client and the `files`, `jobs` and `checkpoints` commands against a real
`sagetrain serve`: a tiny job trained end to end, watched live, and its checkpoint
downloaded and loaded with plain transformers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from api_helpers import LiveServer

from sagetrain.cli import main
from sagetrain.client import Client, SageTrainAPIError

pytestmark = pytest.mark.slow


@pytest.fixture
def env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> LiveServer:
    monkeypatch.setenv("SAGETRAIN_BASE_URL", live_server.url)
    monkeypatch.setenv("SAGETRAIN_API_KEY", live_server.key)
    return live_server


def _rows(path: Path, n: int) -> Path:
    rng = random.Random(n)
    words = {"spam": ("free", "win", "prize", "cash"), "ham": ("hello", "home", "ok", "see")}
    lines = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        lines.append(json.dumps({"text": " ".join(rng.choices(words[label], k=5)),
                                 "label": label}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_watch_and_download(env: LiveServer, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    with Client() as client:
        train = client.upload_file(_rows(tmp_path / "train.jsonl", 32))
        assert train["id"].startswith("file-") and train["status"] == "processed"
        assert train["id"] in [f["id"] for f in client.list_files()["data"]]
        job = client.create_job("tiny-bert", train["id"], suffix="cli", idempotency_key="k1",
                                hyperparameters={"n_epochs": 2, "batch_size": 8,
                                                 "max_seq_length": 16})
        again = client.create_job("tiny-bert", train["id"], suffix="cli", idempotency_key="k1",
                                  hyperparameters={"n_epochs": 2, "batch_size": 8,
                                                   "max_seq_length": 16})
        assert again["id"] == job["id"]

    capsys.readouterr()
    assert main(["jobs", "watch", job["id"]]) == 0, env.log_text()
    out, err = capsys.readouterr()
    assert "status: succeeded at step 8/8" in out
    assert "fine-tuned model: ft:tiny-bert:cli:" in out
    assert "8/8" in err  # the progress bar reached the last step
    assert "loss=" in err and "lr=" in err

    with Client() as client:
        assert client.get_job(job["id"])["status"] == "succeeded"
        assert client.metrics(job["id"])["data"][0]["step"] >= 1
        assert client.list_events(job["id"])["data"]
        assert client.list_checkpoints(job["id"])["data"][0]["step_number"] == 8

    assert main(["checkpoints", "download", job["id"], "--output", str(tmp_path / "ckpt")]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder.parent == tmp_path / "ckpt" and folder.is_dir()
    assert not (folder / "training_state.pt").exists()
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert set(model.config.id2label.values()) == {"ham", "spam"}


def test_cli_create_and_control(env: LiveServer, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "train.jsonl"
    assert main(["files", "upload", str(_rows(train, 400))]) == 0
    file_id = json.loads(capsys.readouterr().out)["id"]
    assert main(["jobs", "create", "--model", "tiny-bert", "--training-file", file_id,
                 "--epochs", "30", "--optimizer", "adamw", "--learning-rate", "1e-3"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["hyperparameters"]["optimizer"] == "adamw"
    assert main(["jobs", "cancel", job["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"
    assert main(["jobs", "watch", job["id"], "--no-progress"]) == 2
    assert "status: cancelled" in capsys.readouterr().out
    assert main(["jobs", "list", "--limit", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"][0]["id"] == job["id"]
    assert main(["jobs", "list", "--limit", "1"]) == 0
    header, row, *more = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "status", "model", "created", "steps", "fine-tuned",
                              "model"]
    assert row.split()[:3] == [job["id"], "cancelled", "tiny-bert"]
    assert more in ([], [f"more: --after {job['id']}"])  # more if other tests made jobs
    assert main(["files", "list", "--json"]) == 0
    assert file_id in [f["id"] for f in json.loads(capsys.readouterr().out)["data"]]
    assert main(["files", "list"]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert listed[0] == ["id", "file", "name", "task", "rows", "size", "created", "status"]
    mine = next(cells for cells in listed if cells[0] == file_id)
    assert mine[1:4] == ["train.jsonl", "text-classification", "400"] and mine[-1] == "processed"
    # the job has ended, so its file may go; then it is gone
    assert main(["files", "delete", file_id]) == 0
    assert json.loads(capsys.readouterr().out) == {"id": file_id, "object": "file",
                                                   "deleted": True}
    assert main(["files", "delete", file_id]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly(env: LiveServer) -> None:
    """`sagetrain ... | head`: the reader leaves early; no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "sagetrain.cli", "jobs", "list"],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              check=False)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_create_and_watch_prints_one_line_then_follows(
        env: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["files", "upload", str(_rows(tmp_path / "train.jsonl", 32))]) == 0
    file_id = json.loads(capsys.readouterr().out)["id"]
    assert main(["jobs", "create", "--model", "tiny-bert", "--training-file", file_id,
                 "--epochs", "1", "--batch-size", "8", "--max-seq-length", "16",
                 "--watch", "--no-progress"]) == 0, env.log_text()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("created ftjob-")
    assert ": tiny-bert, text-classification, sage at 0.00015, 1 epochs (queued)" in lines[0]
    assert not any(line.startswith("{") for line in lines)  # no JSON dump
    assert any("status: succeeded at step 4/4" in line for line in lines)


def test_api_errors_are_clean(env: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "get", "ftjob-nope"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and "Traceback" not in err
    assert main(["jobs", "create", "--model", "no-such-model", "--training-file",
                 "file-nope"]) == 1
    assert "(param: " in capsys.readouterr().err
    with Client() as client, pytest.raises(SageTrainAPIError) as info:
        client.cancel_job("ftjob-nope")
    assert info.value.status == 404 and info.value.type
    assert main(["jobs", "get", "ftjob-x", "--api-key", "sk-wrong"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
