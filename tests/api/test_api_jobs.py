"""/v1/fine_tuning/jobs: validation, idempotency, paging, steering, sub-resources."""

from __future__ import annotations

import io
import tarfile
import threading
from typing import Any

import pytest
from api_helpers import Service
from sqlalchemy import update

from sage_core.artifacts import get_artifact_store
from sage_core.db import transitions
from sage_core.db.events import add_event
from sage_core.db.ids import new_id
from sage_core.db.models import Checkpoint, Job, JobMetric
from sage_core.db.session import make_engine, make_session_factory


def _db(service: Service):  # type: ignore[no-untyped-def]
    return make_session_factory(make_engine(service.settings.resolved_database_url))


def test_create_resolves_everything(service: Service) -> None:
    job = service.create_job(hyperparameters={"n_epochs": 2, "optimizer": "adamw"},
                             suffix="my-model_1", metadata={"team": "nlp"}, seed=7)
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert job["status"] == "queued" and job["queue_position"] == 1
    assert job["hyperparameters"]["n_epochs"] == 2
    assert job["hyperparameters"]["batch_size"] == 32
    assert job["hyperparameters"]["learning_rate"] == pytest.approx(5e-5)
    assert job["seed"] == 7 and job["metadata"] == {"team": "nlp"}
    assert job["task"] == "text-classification" and job["suffix"] == "my-model_1"
    assert job["progress"] == {"step": 0, "total_steps": None, "epoch": 0.0}
    assert job["error"] is None and job["result_files"] == [] and job["fine_tuned_model"] is None
    assert service.dispatcher.dispatched == [job["id"]]
    second = service.create_job()
    assert 0 <= second["seed"] < 2**31  # chosen at random and stored
    assert second["queue_position"] == 2
    got = service.client.get(f"/v1/fine_tuning/jobs/{second['id']}", headers=service.auth())
    assert got.json()["seed"] == second["seed"]


def test_resources_default_to_one_gpu_and_are_stored(service: Service) -> None:
    job = service.create_job()
    assert job["resources"] == {"gpus": 1, "strategy": "auto"}
    job = service.create_job(resources={"gpus": 2, "strategy": "ddp"})
    assert job["resources"] == {"gpus": 2, "strategy": "ddp"}
    got = service.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=service.auth())
    assert got.json()["resources"] == {"gpus": 2, "strategy": "ddp"}
    with _db(service)() as session:
        assert session.get(Job, job["id"]).spec["resources"] == {"gpus": 2, "strategy": "ddp"}


@pytest.mark.parametrize(("body", "param"), [
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": -1}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": 0}},
     "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"beta3": 1.5}}, "hyperparameters.beta3"),
    ({"hyperparameters": {"optimizer": "sgd"}}, "hyperparameters.optimizer"),
    ({"hyperparameters": {"warmup_ratio": 2}}, "hyperparameters.warmup_ratio"),
    ({"hyperparameters": {"bogus": 1}}, "hyperparameters.bogus"),
    ({"resources": {"gpus": 0}}, "resources.gpus"),
    ({"resources": {"strategy": "tensor-parallel"}}, "resources.strategy"),
    ({"resources": {"nodes": 2}}, "resources.nodes"),
    ({"resources": {"gpus": 4}, "hyperparameters": {"batch_size": 2}}, "resources.gpus"),
    ({"suffix": "has space"}, "suffix"),
    ({"suffix": "x" * 65}, "suffix"),
    ({"seed": -1}, "seed"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"task": "summarization"}, "task"),
    ({"unknown_field": 1}, "unknown_field"),
    ({"model": "no-such-model"}, "model"),
    ({"model": "../../etc"}, "model"),
    ({"training_file": "file-nope"}, "training_file"),
    ({"validation_file": "file-nope"}, "validation_file"),
])
def test_bad_fields_are_named(service: Service, body: dict, param: str) -> None:
    payload = {"model": "tiny-bert", "training_file": service.upload()["id"], **body}
    r = service.client.post("/v1/fine_tuning/jobs", headers=service.auth(), json=payload)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error" and error["message"]
    assert service.dispatcher.dispatched == []


def test_missing_field_and_other_keys_file(service: Service) -> None:
    r = service.client.post("/v1/fine_tuning/jobs", headers=service.auth(),
                            json={"model": "tiny-bert"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    theirs = service.upload(key=service.other_key)["id"]
    r = service.client.post("/v1/fine_tuning/jobs", headers=service.auth(),
                            json={"model": "tiny-bert", "training_file": theirs})
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    assert "No such file" in r.json()["error"]["message"]


def test_task_mismatch_revalidates(service: Service) -> None:
    csv = b"text,label\nhello,0.5\nbye,1.5\nok,2.0\n"
    classification = service.upload(csv, name="s.csv")["id"]
    job = service.create_job(training_file=classification, task="text-regression")
    assert job["task"] == "text-regression"
    words = service.upload()["id"]
    r = service.client.post("/v1/fine_tuning/jobs", headers=service.auth(), json={
        "model": "tiny-bert", "training_file": words, "task": "text-regression"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    assert "line 1" in r.json()["error"]["message"]


def test_idempotency_key(service: Service) -> None:
    file_id = service.upload()["id"]
    body = {"model": "tiny-bert", "training_file": file_id, "hyperparameters": {"n_epochs": 1}}
    headers = {**service.auth(), "Idempotency-Key": "abc-123"}
    first = service.client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    again = service.client.post("/v1/fine_tuning/jobs", headers=headers,
                                json=dict(reversed(body.items())))
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert service.dispatcher.dispatched == [first.json()["id"]]
    changed = service.client.post("/v1/fine_tuning/jobs", headers=headers,
                                  json={**body, "seed": 3})
    assert changed.status_code == 409 and changed.json()["error"]["code"] == (
        "idempotency_key_reused")
    # keys are per API key: another caller's identical key is unrelated
    theirs = service.upload(key=service.other_key)["id"]
    other = service.client.post(
        "/v1/fine_tuning/jobs", json={**body, "training_file": theirs},
        headers={**service.auth(service.other_key), "Idempotency-Key": "abc-123"})
    assert other.status_code == 200 and other.json()["id"] != first.json()["id"]


def test_queue_position_counts_the_queued_jobs_ahead(service: Service) -> None:
    file_id = service.upload()["id"]
    c, auth, jobs = service.client, service.auth(), "/v1/fine_tuning/jobs"

    def position(job_id: str) -> Any:
        return c.get(f"{jobs}/{job_id}", headers=auth).json()["queue_position"]

    ids = []
    for expected in range(1, 6):
        job = service.create_job(training_file=file_id)
        assert job["queue_position"] == expected == position(job["id"])
        ids.append(job["id"])
    c.post(f"{jobs}/{ids[1]}/cancel", headers=auth)
    c.post(f"{jobs}/{ids[2]}/pause", headers=auth)
    assert [position(i) for i in ids] == [1, None, None, 2, 3]
    theirs = service.upload(key=service.other_key)["id"]  # every key's jobs share one queue
    assert service.create_job(key=service.other_key, training_file=theirs)[
        "queue_position"] == 4
    resumed = c.post(f"{jobs}/{ids[2]}/resume", headers=auth).json()
    assert resumed["queue_position"] == 5  # at the back of the queue
    factory = _db(service)
    with factory.begin() as s:
        assert transitions.claim(s, ids[0], owner="w", lease_seconds=60)
    assert [position(i) for i in ids] == [None, None, 4, 1, 2]


def test_concurrent_creation(service: Service) -> None:
    """Creations at once: each job made once, one job per Idempotency-Key, every queued job
    in its own place."""
    file_id = service.upload()["id"]
    body = {"model": "tiny-bert", "training_file": file_id}
    answers: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def create(n: int) -> None:
        try:
            start.wait()
            for i in range(3):
                headers = {**service.auth(), "Idempotency-Key": "same" if i == 0 else f"{n}-{i}"}
                r = service.client.post("/v1/fine_tuning/jobs", headers=headers, json=body)
                answers.append((i, r.status_code, r.json()))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(status == 200 for _, status, _ in answers), answers
    same = {job["id"] for i, _, job in answers if i == 0}
    assert len(same) == 1  # six requests, one job
    ids = sorted(same | {job["id"] for i, _, job in answers if i > 0})
    assert len(ids) == 1 + 6 * 2
    assert sorted(service.dispatcher.dispatched) == ids  # each created job dispatched once
    listed = service.client.get("/v1/fine_tuning/jobs?limit=100", headers=service.auth())
    assert sorted(j["queue_position"] for j in listed.json()["data"]) == list(
        range(1, len(ids) + 1))


def test_list_pages_newest_first(service: Service) -> None:
    file_id = service.upload()["id"]
    ids = [service.create_job(training_file=file_id)["id"] for _ in range(5)]
    c = service.client
    page1 = c.get("/v1/fine_tuning/jobs?limit=3", headers=service.auth()).json()
    assert [j["id"] for j in page1["data"]] == ids[::-1][:3] and page1["has_more"]
    assert [j["queue_position"] for j in page1["data"]] == [5, 4, 3]
    page2 = c.get(f"/v1/fine_tuning/jobs?limit=3&after={page1['data'][-1]['id']}",
                  headers=service.auth()).json()
    assert [j["id"] for j in page2["data"]] == ids[::-1][3:] and not page2["has_more"]
    assert c.get("/v1/fine_tuning/jobs", headers=service.auth(service.other_key)).json()[
        "data"] == []


def test_cancel_pause_resume(service: Service) -> None:
    c, auth = service.client, service.auth()
    job = service.create_job()
    url = f"/v1/fine_tuning/jobs/{job['id']}"
    paused = c.post(f"{url}/pause", headers=auth).json()
    assert paused["status"] == "paused" and paused["queue_position"] is None
    assert c.post(f"{url}/pause", headers=auth).json()["status"] == "paused"
    resumed = c.post(f"{url}/resume", headers=auth).json()
    assert resumed["status"] == "queued" and resumed["queue_position"] == 1
    assert service.dispatcher.dispatched == [job["id"], job["id"]]
    cancelled = c.post(f"{url}/cancel", headers=auth).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert c.post(f"{url}/cancel", headers=auth).status_code == 200
    for action in ("pause", "resume"):
        r = c.post(f"{url}/{action}", headers=auth)
        assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_job_state"
    messages = [e["message"] for e in c.get(f"{url}/events", headers=auth).json()["data"]]
    assert messages[0] == "Job cancelled" and messages[-1].startswith("Created fine-tuning job")


def test_pause_of_running_job_is_a_request(service: Service) -> None:
    job = service.create_job()
    factory = _db(service)
    with factory.begin() as s:
        assert transitions.claim(s, job["id"], owner="w", lease_seconds=60)
    url = f"/v1/fine_tuning/jobs/{job['id']}"
    r = service.client.post(f"{url}/pause", headers=service.auth()).json()
    assert r["status"] == "running"
    with factory() as s:
        assert s.get(Job, job["id"]).pause_requested
    r = service.client.post(f"{url}/resume", headers=service.auth()).json()
    assert r["status"] == "running"
    with factory() as s:
        assert not s.get(Job, job["id"]).pause_requested


def test_events_metrics_checkpoints(service: Service) -> None:
    job = service.create_job()
    job_id = job["id"]
    store = get_artifact_store(service.settings)
    factory = _db(service)
    with factory.begin() as s:
        for i in range(4):
            add_event(s, job_id, f"step {i}")
        add_event(s, job_id, "eval", type="metrics", data={"step": 2, "valid_loss": 0.5})
        s.add(JobMetric(job_id=job_id, step=1, kind="train",
                        data={"epoch": 0.5, "train_loss": 0.9, "learning_rate": 1e-4}))
        s.add(JobMetric(job_id=job_id, step=2, kind="eval",
                        data={"epoch": 1.0, "valid_loss": 0.5, "valid_accuracy": 0.75}))
        key = f"jobs/{job_id}/checkpoints/step-2"
        folder = service.settings.data_dir / "ck"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "training_state.pt").write_bytes(b"x")
        (folder / "trainer_state.json").write_text("{}")
        store.put_tree(key, folder)
        s.add(Checkpoint(id=new_id("ftckpt"), job_id=job_id, step=2, storage_key=key,
                         metrics={"valid_loss": 0.5}, fine_tuned_model_checkpoint="ft:x:ckpt-2"))
        s.execute(update(Job).where(Job.id == job_id).values(step=2, total_steps=4, epoch=1.0))
    c, auth, url = service.client, service.auth(), f"/v1/fine_tuning/jobs/{job_id}"
    events = c.get(f"{url}/events?limit=2", headers=auth).json()
    assert [e["message"] for e in events["data"]] == ["eval", "step 3"] and events["has_more"]
    assert events["data"][0]["type"] == "metrics" and events["data"][0]["data"]["step"] == 2
    older = c.get(f"{url}/events?after={events['last_id']}", headers=auth).json()
    assert [e["message"] for e in older["data"]][:3] == ["step 2", "step 1", "step 0"]
    metrics = c.get(f"{url}/metrics", headers=auth).json()["data"]
    assert metrics[0] == {"step": 1, "epoch": 0.5, "train_loss": 0.9, "learning_rate": 1e-4}
    assert metrics[1]["valid_accuracy"] == 0.75
    assert [m["step"] for m in c.get(f"{url}/metrics?from_step=2", headers=auth).json()[
        "data"]] == [2]
    ckpts = c.get(f"{url}/checkpoints", headers=auth).json()["data"]
    assert ckpts[0]["step_number"] == 2 and ckpts[0]["object"] == "fine_tuning.job.checkpoint"
    assert ckpts[0]["metrics"] == {"step": 2, "valid_loss": 0.5}
    archive = c.get(f"{url}/checkpoints/{ckpts[0]['id']}/content", headers=auth)
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        assert tar.getnames() == [f"{job_id}-step-2/config.json"]
    got = c.get(url, headers=auth).json()
    assert got["progress"] == {"step": 2, "total_steps": 4, "epoch": 1.0}


def test_models_lists_catalog_and_own_fine_tunes(service: Service) -> None:
    job = service.create_job()
    factory = _db(service)
    with factory.begin() as s:
        transitions.claim(s, job["id"], owner="w", lease_seconds=60)
        transitions.succeed(s, job["id"], owner="w", fine_tuned_model="ft:tiny-bert::abc")
    c = service.client
    mine = c.get("/v1/models", headers=service.auth()).json()
    ids = [m["id"] for m in mine["data"]]
    assert "tiny-bert" in ids and "ft:tiny-bert::abc" in ids
    assert all(m["object"] == "model" for m in mine["data"])
    theirs = [m["id"] for m in c.get("/v1/models", headers=service.auth(service.other_key))
              .json()["data"]]
    assert "tiny-bert" in theirs and "ft:tiny-bert::abc" not in theirs
    assert c.get("/v1/models/tiny-bert", headers=service.auth()).json()["id"] == "tiny-bert"
    assert c.get("/v1/models/ft:tiny-bert::abc", headers=service.auth(service.other_key)
                 ).status_code == 404


def test_file_in_use_cannot_be_deleted(service: Service) -> None:
    job = service.create_job()
    r = service.client.delete(f"/v1/files/{job['training_file']}", headers=service.auth())
    assert r.status_code == 409
    service.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=service.auth())
    r = service.client.delete(f"/v1/files/{job['training_file']}", headers=service.auth())
    assert r.status_code == 200
