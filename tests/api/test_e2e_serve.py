"""End to end over HTTP against `sagetrain serve`: a real job on the tiny model runs in its
own process to `succeeded`, and its checkpoint loads with plain transformers; a running
job is cancelled and its process goes away; a SIGKILLed server leaves no training behind,
and started again it resumes the job from its checkpoint."""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time
from pathlib import Path

import pytest
from api_helpers import LiveServer, worker_pids
from process_helpers import wait_for
from sample_data import rows

pytestmark = pytest.mark.slow


def upload(client, data: bytes, name: str) -> str:  # type: ignore[no-untyped-def]
    r = client.post("/v1/files", files={"file": (name, data)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_job_succeeds_and_checkpoint_loads(live_server: LiveServer, tmp_path: Path) -> None:
    with live_server.client() as c:
        train, valid = upload(c, rows(64, 0), "train.jsonl"), upload(c, rows(16, 1), "v.jsonl")
        r = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-bert", "training_file": train, "validation_file": valid,
            "suffix": "e2e", "hyperparameters": {
                "n_epochs": 2, "batch_size": 8, "max_seq_length": 16, "learning_rate": 1e-3}})
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]

        def finished() -> dict | None:
            job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, 180, "the job to finish", interval=0.5)
        assert job["status"] == "succeeded", (job, live_server.log_text())
        assert job["fine_tuned_model"].startswith("ft:tiny-bert:e2e:")
        assert job["progress"] == {"step": 16, "total_steps": 16, "epoch": 2.0}
        assert job["trained_tokens"] > 0 and job["finished_at"] >= job["created_at"]

        metrics = c.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
        assert {"train_loss", "learning_rate"} <= set(metrics[0])
        assert any("valid_accuracy" in m for m in metrics)
        results = c.get(f"/v1/files/{job['result_files'][0]}/content").text
        assert results.splitlines()[0].startswith("step,epoch")
        models = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert job["fine_tuned_model"] in models

        ckpts = c.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
        assert ckpts[0]["step_number"] == 16
        archive = c.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{ckpts[0]['id']}/content")
        assert archive.status_code == 200

    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    (folder,) = tmp_path.iterdir()
    # the resume state stays on the server
    assert not (folder / "training_state.pt").exists()
    assert not (folder / "trainer_state.json").exists()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["free cash prize now", "see you later at home"], return_tensors="pt",
                      padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2)
    assert set(model.config.id2label.values()) == {"ham", "spam"}


def test_cancel_running_job_stops_its_process(live_server: LiveServer) -> None:
    with live_server.client() as c:
        train = upload(c, rows(2000, 2), "big.jsonl")
        r = c.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-bert", "training_file": train,
            "hyperparameters": {"n_epochs": 20, "batch_size": 4, "max_seq_length": 16}})
        job_id = r.json()["id"]

        live_server.wait_training(c, job_id, timeout=180)
        assert worker_pids(job_id), "the job's process is not running"
        cancelled = c.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()
        assert cancelled["status"] == "cancelled"
        wait_for(lambda: not worker_pids(job_id), 15, "the job's process to exit")
        job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["fine_tuned_model"] is None
        assert c.get("/healthz").status_code == 200  # the server is unharmed


def _session_members(sid: int) -> list[int]:
    """Processes in the session `sid` (a job's process and anything it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid and "zombie" not in (
                        entry / "status").read_text():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.timeout(150)  # about 60 s on two busy cores, most of it three runs starting torch
def test_a_killed_server_leaves_no_training_and_its_job_resumes(
        tmp_path: Path, models_dir: Path) -> None:
    """kill -9 of `sagetrain serve`: its job's process dies with it within seconds (no
    orphan training with PPID 1). Started again, the server runs the job queued behind
    (the killed job's lease has not expired yet) and then resumes the killed job once from
    its checkpoint, one trainer at a time throughout."""
    started = time.monotonic()
    fast = {"SAGETRAIN_LEASE_SECONDS": "4"}  # a lost job is queued again 4 s after its server
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "max_seq_length": 16,
                       "checkpoint_every_steps": 3}  # 16 steps
    with LiveServer.start(tmp_path, models_dir, fast) as server, server.client() as c:
        train = upload(c, rows(32, 3), "train.jsonl")
        job_ids = []
        for _ in range(2):  # the second waits in the queue behind the first
            r = c.post("/v1/fine_tuning/jobs", json={
                "model": "tiny-bert", "training_file": train,
                "hyperparameters": hyperparameters})
            assert r.status_code == 200, r.text
            job_ids.append(r.json()["id"])
        job_id, behind = job_ids

        def checkpointed() -> bool:
            job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            assert job["status"] in ("queued", "running"), (job, server.log_text())
            return bool(c.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"])

        wait_for(checkpointed, 40, "the job's first checkpoint", interval=0.1)
        (pid,) = worker_pids(job_id)
        assert os.getsid(pid) == pid  # its own session: its own process group
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        wait_for(lambda: not _session_members(pid), 5, "the job's processes to die with serve")
        key = server.key

    with LiveServer.start(tmp_path, models_dir, fast) as server:
        server.key = key  # the jobs' owner
        c = server.client()
        most_at_once = 0

        def finished() -> list[dict] | None:
            nonlocal most_at_once
            most_at_once = max(most_at_once, len(worker_pids(job_id) + worker_pids(behind)))
            jobs = [c.get(f"/v1/fine_tuning/jobs/{i}").json() for i in job_ids]
            done = all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs)
            return jobs if done else None

        jobs = wait_for(finished, 90, "both jobs to finish after the restart", interval=0.2)
        assert [j["status"] for j in jobs] == ["succeeded"] * 2, (jobs, server.log_text())
        assert most_at_once == 1, "two trainers ran at once"
        events = [e["message"] for e in
                  c.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100").json()["data"]]
        assert any(e.startswith("Worker lost (no heartbeat)") for e in events), events
        assert sum(e.startswith("resumed from step") for e in events) == 1, events
        starts = sorted(e for e in events if e.startswith("Fine-tuning job started"))
        assert starts == ["Fine-tuning job started (attempt 1)",
                          "Fine-tuning job started (attempt 2)"], events
        c.close()
    print(f"killed and resumed in {time.monotonic() - started:.0f} s")
