"""Chat and completion files over HTTP: the task recognised on upload, with statistics and
line-numbered problems; jobs whose task comes from, or does not fit, their files; OpenAI's
`method`; LoRA on a job that cannot take it; the two variants of a checkpoint download."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from api_helpers import TRAIN_JSONL, Service

from sage_core.artifacts import get_artifact_store
from sage_core.db.ids import new_id
from sage_core.db.models import Checkpoint
from sage_core.db.session import make_engine, make_session_factory

JOBS = "/v1/fine_tuning/jobs"


def jsonl(*rows: Any) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def conversation(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


CHAT = jsonl(conversation("hi", "hello"), conversation("weather?", "sunny"),
             conversation("time?", "noon"))
COMPLETION = jsonl({"prompt": "2 + 2 =", "completion": " 4"},
                   {"prompt": "3 + 3 =", "completion": " 6"})


def post_file(service: Service, data: bytes, name: str = "f.jsonl",
              **fields: str) -> dict[str, Any]:
    r = service.client.post("/v1/files", headers=service.auth(), files={"file": (name, data)},
                            data={"purpose": "fine-tune", **fields})
    return {"status": r.status_code, **r.json()}


def post_job(service: Service, **body: Any) -> tuple[int, dict[str, Any]]:
    body.setdefault("model", "tiny-llama")
    r = service.client.post(JOBS, headers=service.auth(), json=body)
    return r.status_code, r.json()


def stored_files(service: Service) -> list[Path]:
    return list((service.settings.data_dir / "artifacts" / "files").glob("*"))


# --- upload ------------------------------------------------------------------------------

def test_chat_upload_is_recognised_with_statistics(service: Service) -> None:
    created = service.upload(CHAT, name="chat.jsonl")
    assert created["stats"] == {
        "task": "chat", "examples": 3, "format": "jsonl", "messages": 9,
        "messages_per_example": {"min": 3, "mean": 3.0, "max": 3}, "examples_with_tools": 0,
        "characters_per_example": {"min": 16, "mean": 18.7, "max": 22}}
    got = service.client.get(f"/v1/files/{created['id']}", headers=service.auth()).json()
    assert got["stats"]["task"] == "chat"
    assert service.upload(CHAT, name="chat.jsonl", task="chat")["stats"]["task"] == "chat"


def test_completion_upload_is_recognised_with_statistics(service: Service) -> None:
    created = service.upload(COMPLETION, name="pairs.jsonl")
    assert created["stats"] == {"task": "completion", "examples": 2, "format": "jsonl",
                                "characters_per_example": {"min": 9, "mean": 9.0, "max": 9}}


def test_text_uploads_are_as_before(service: Service) -> None:
    assert service.upload()["stats"] == {
        "task": "text-classification", "rows": 6, "columns": ["text", "label"],
        "format": "jsonl", "label_counts": {"ham": 3, "spam": 3}}
    regression = service.upload(b"text,label\na,0.5\nb,1.5\n", name="r.csv",
                                task="text-regression")
    assert regression["stats"]["task"] == "text-regression"


@pytest.mark.parametrize(("message", "where"), [
    ({"role": "robot", "content": "x"}, "line 2, field 'messages[1].role': unknown role"),
    ({"role": "user"}, "line 2, field 'messages[1].content': missing"),
    ({"role": "assistant", "content": "x", "weight": 2},
     "line 2, field 'messages[1].weight': must be 0 or 1, got 2"),
    ({"role": "user", "content": "x", "weight": 1},
     "line 2, field 'messages[1].weight': only assistant messages take a weight"),
])
def test_each_chat_problem_is_named_by_line_and_field(service: Service, message: dict,
                                                      where: str) -> None:
    bad = {"messages": [{"role": "user", "content": "hi"}, message,
                        {"role": "assistant", "content": "ok"}]}
    r = post_file(service, jsonl(conversation("a", "b"), bad, conversation("c", "d")))
    assert r["status"] == 400
    assert r["error"]["code"] == "invalid_file" and r["error"]["param"] == "file"
    assert r["error"]["message"].startswith("Invalid file: f.jsonl: " + where), r
    assert not stored_files(service)


def test_no_assistant_message(service: Service) -> None:
    lonely = {"messages": [{"role": "user", "content": "hi"}]}
    r = post_file(service, jsonl(conversation("a", "b"), conversation("c", "d"), lonely))
    assert r["status"] == 400
    assert "line 3, field 'messages': no assistant message" in r["error"]["message"]


def test_mixed_formats_are_refused(service: Service) -> None:
    r = post_file(service, jsonl(conversation("a", "b"), {"prompt": "p", "completion": "c"},
                                 conversation("c", "d")))
    assert r["status"] == 400
    assert ("line 2: mixed formats: this row is prompt/completion, but the file began as "
            "chat") in r["error"]["message"]


@pytest.mark.parametrize(("data", "task", "layout"), [
    (CHAT, "text-classification", "chat (OpenAI's messages format)"),
    (CHAT, "completion", "chat (OpenAI's messages format)"),
    (TRAIN_JSONL, "chat", "text (text and label)"),
    (COMPLETION, "text-regression", "prompt/completion"),
])
def test_an_explicit_task_that_does_not_fit(service: Service, data: bytes, task: str,
                                            layout: str) -> None:
    r = post_file(service, data, task=task)
    assert r["status"] == 400 and r["error"]["param"] == "file"
    assert r["error"]["message"] == (f"Invalid file: f.jsonl: line 1: this row is {layout}, "
                                     f"which does not fit the task {task} that the file was "
                                     "given for")


def test_upload_schema_documents_the_optional_task(service: Service) -> None:
    schema = service.client.get("/openapi.json").json()
    body = schema["paths"]["/v1/files"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]
    assert "task" not in body["required"] and "default" not in body["properties"]["task"]
    assert "recognised from the rows" in body["properties"]["task"]["description"]


# --- jobs --------------------------------------------------------------------------------

def test_job_takes_its_task_from_the_training_file(service: Service) -> None:
    chat = service.upload(CHAT, name="chat.jsonl")["id"]
    valid = service.upload(CHAT, name="valid.jsonl")["id"]
    job = service.create_job(model="tiny-llama", training_file=chat, validation_file=valid)
    assert job["task"] == "chat"
    assert job["hyperparameters"]["batch_size"] == 8  # chat's "auto"
    assert job["hyperparameters"]["max_seq_length"] == 1024
    completion = service.upload(COMPLETION, name="c.jsonl")["id"]
    assert service.create_job(model="tiny-llama", training_file=completion)["task"] == "completion"
    assert service.create_job()["task"] == "text-classification"


@pytest.mark.parametrize(("data", "held", "task"), [
    (CHAT, "chat", "text-classification"),
    (CHAT, "chat", "completion"),
    (COMPLETION, "completion", "chat"),
    (TRAIN_JSONL, "text-classification", "chat"),
])
def test_a_training_file_of_another_family_names_both_tasks(service: Service, data: bytes,
                                                            held: str, task: str) -> None:
    file_id = service.upload(data)["id"]
    status, answer = post_job(service, training_file=file_id, task=task)
    assert status == 400, answer
    family = "text" if held.startswith("text") else held
    assert answer["error"] == {
        "message": f"training_file {file_id} holds {family} data (task {held}), but the "
                   f"job's task is {task}",
        "type": "invalid_request_error", "param": "training_file", "code": "invalid_file"}
    assert service.dispatcher.dispatched == []


def test_the_validation_file_must_hold_the_training_files_task(service: Service) -> None:
    chat = service.upload(CHAT)["id"]
    for data, held in ((TRAIN_JSONL, "text-classification"), (COMPLETION, "completion")):
        other = service.upload(data)["id"]
        status, answer = post_job(service, training_file=chat, validation_file=other)
        assert status == 400 and answer["error"]["param"] == "validation_file"
        assert answer["error"]["message"].startswith(
            f"validation_file {other} holds") and f"(task {held}), but the job's task is " \
            "chat" in answer["error"]["message"]


def test_method_supervised_is_accepted_and_shown(service: Service) -> None:
    chat = service.upload(CHAT)["id"]
    job = service.create_job(model="tiny-llama", training_file=chat, method={
        "type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "learning_rate_multiplier": 2, "optimizer": "adamw",
            "lora": {"r": 4}, "train_on_inputs": True}}})
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 2.0}}}
    hp = job["hyperparameters"]
    assert hp["optimizer"] == "adamw" and hp["lora"]["r"] == 4 and hp["train_on_inputs"]
    assert hp["learning_rate"] == pytest.approx(5e-5 * 4 * 2)  # LoRA's factor, the multiplier
    plain = service.create_job(hyperparameters={"n_epochs": 1})
    assert plain["method"]["supervised"]["hyperparameters"] == {
        "n_epochs": 1, "batch_size": 32, "learning_rate_multiplier": 1.0}
    bare = service.create_job(method={"type": "supervised"})
    assert bare["hyperparameters"]["n_epochs"] == 10  # auto: 6 rows take one step an epoch


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"hyperparameters": {"n_epochs": 1},
      "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}},
     "method", "not both"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}}, "method",
     "method type 'dpo' is not supported; sagetrain trains with: supervised"),
    ({"method": {"type": "reinforcement"}}, "method", "'reinforcement' is not supported"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
     "method.supervised.hyperparameters.n_epochs", "n_epochs"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"bogus": 1}}}},
     "method.supervised.hyperparameters.bogus", "Unrecognized"),
    ({"method": {"supervised": {}}}, "method.type", "Missing"),
])
def test_bad_methods_are_refused(service: Service, body: dict, param: str, words: str) -> None:
    status, answer = post_job(service, training_file=service.upload()["id"], **body)
    assert status == 400, answer
    assert answer["error"]["param"] == param and words in answer["error"]["message"], answer


@pytest.mark.parametrize(("hyperparameters", "param"), [
    ({"lora": {"r": 8}}, "hyperparameters.lora"),
    ({"train_on_inputs": True}, "hyperparameters.train_on_inputs"),
])
def test_lora_on_a_classification_job_is_a_400(service: Service, hyperparameters: dict,
                                               param: str) -> None:
    file_id = service.upload()["id"]
    status, answer = post_job(service, training_file=file_id, hyperparameters=hyperparameters)
    assert status == 400, answer
    assert answer["error"]["param"] == param
    assert answer["error"]["code"] == "invalid_hyperparameters"
    assert "chat, completion, not to text-classification" in answer["error"]["message"]
    status, answer = post_job(service, training_file=file_id, method={
        "type": "supervised", "supervised": {"hyperparameters": hyperparameters}})
    assert status == 400 and answer["error"]["param"] == f"method.supervised.{param}"
    valid = service.upload()["id"]
    status, answer = post_job(service, training_file=file_id, validation_file=valid,
                              hyperparameters=hyperparameters, compare_to=["adamw"])
    assert status == 400 and answer["error"]["param"] == param
    assert service.dispatcher.dispatched == []


def test_a_sweep_takes_method_and_the_files_task(service: Service) -> None:
    chat, valid = service.upload(CHAT)["id"], service.upload(CHAT)["id"]
    method = {"type": "supervised",
              "supervised": {"hyperparameters": {"n_epochs": 1, "lora": {"r": 2}}}}
    parent = service.create_job(model="tiny-llama", training_file=chat, validation_file=valid,
                                method=method, sweep={"learning_rate": [1e-4, 1e-3]})
    assert parent["task"] == "chat" and parent["sweep"]["metric"] == "valid_loss"
    children = [service.client.get(f"{JOBS}/{run['job_id']}", headers=service.auth()).json()
                for run in parent["sweep"]["runs"]]
    assert [c["task"] for c in children] == ["chat", "chat"]
    assert [c["hyperparameters"]["learning_rate"] for c in children] == [1e-4, 1e-3]
    assert all(c["hyperparameters"]["lora"]["r"] == 2 and c["hyperparameters"]["n_epochs"] == 1
               for c in children)


# --- checkpoint variants -----------------------------------------------------------------

def _checkpoint(service: Service, job_id: str, *, lora: bool) -> str:
    """A stored checkpoint of `job_id` as the engine leaves it: the model folder, the
    resume state and, for a LoRA job, the peft adapter folder."""
    folder = service.settings.data_dir / f"ck-{job_id}"
    (folder / "adapter").mkdir(parents=True) if lora else folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text(name)
    (folder / "training_state.pt").write_bytes(b"state")
    (folder / "trainer_state.json").write_text("{}")
    if lora:
        (folder / "adapter" / "adapter_config.json").write_text("{}")
        (folder / "adapter" / "adapter_model.safetensors").write_text("weights")
    key = f"jobs/{job_id}/checkpoints/step-3"
    get_artifact_store(service.settings).put_tree(key, folder)
    checkpoint_id = new_id("ftckpt")
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine).begin() as s:
        s.add(Checkpoint(id=checkpoint_id, job_id=job_id, step=3, storage_key=key,
                         metrics={}, fine_tuned_model_checkpoint="ft:x:ckpt-3"))
    return checkpoint_id


def _download(service: Service, job_id: str, checkpoint_id: str,
              variant: str | None = None) -> Any:
    query = "" if variant is None else f"?variant={variant}"
    return service.client.get(f"{JOBS}/{job_id}/checkpoints/{checkpoint_id}/content{query}",
                              headers=service.auth())


def _names(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        return sorted(tar.getnames())


def test_variants_of_a_lora_checkpoint(service: Service) -> None:
    job_id = service.create_job(model="tiny-llama", training_file=service.upload(CHAT)["id"],
                                hyperparameters={"lora": {}})["id"]
    ckpt = _checkpoint(service, job_id, lora=True)
    model = [f"{job_id}-step-3/{n}" for n in ("config.json", "model.safetensors",
                                              "tokenizer.json")]
    assert _names(_download(service, job_id, ckpt)) == model
    assert _names(_download(service, job_id, ckpt, "merged")) == model
    adapter = _download(service, job_id, ckpt, "adapter")
    assert _names(adapter) == [f"{job_id}-step-3-adapter/adapter_config.json",
                               f"{job_id}-step-3-adapter/adapter_model.safetensors"]
    assert f'filename="{job_id}-step-3-adapter.tar.gz"' in adapter.headers[
        "content-disposition"]


def test_adapter_of_a_full_fine_tune_is_a_400(service: Service) -> None:
    job_id = service.create_job(model="tiny-llama", training_file=service.upload(CHAT)["id"])["id"]
    ckpt = _checkpoint(service, job_id, lora=False)
    assert len(_names(_download(service, job_id, ckpt))) == 3
    r = _download(service, job_id, ckpt, "adapter")
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": f"checkpoint {ckpt} has no LoRA adapter: job {job_id} trained every "
                   "weight; download variant=merged",
        "type": "invalid_request_error", "param": "variant", "code": "no_adapter"}


def test_an_unknown_variant_names_the_allowed_ones(service: Service) -> None:
    job_id = service.create_job()["id"]
    ckpt = _checkpoint(service, job_id, lora=False)
    r = _download(service, job_id, ckpt, "full")
    assert r.status_code == 400 and r.json()["error"]["param"] == "variant"
    assert "'merged' or 'adapter'" in r.json()["error"]["message"]
    schema = service.client.get("/openapi.json").json()
    params = schema["paths"][f"{JOBS}/{{job_id}}/checkpoints/{{checkpoint_id}}/content"][
        "get"]["parameters"]
    (variant,) = [p for p in params if p["name"] == "variant"]
    assert variant["schema"]["enum"] == ["merged", "adapter"]
    assert variant["schema"]["default"] == "merged"


def test_cli_downloads_either_variant(in_process: Service, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from sagetrain.cli import main

    service = in_process
    job_id = service.create_job(model="tiny-llama", training_file=service.upload(CHAT)["id"],
                                hyperparameters={"lora": {}})["id"]
    ckpt = _checkpoint(service, job_id, lora=True)
    assert main(["checkpoints", "download", job_id, "--variant", "adapter",
                 "--output", str(tmp_path / "a")]) == 0
    adapter = Path(capsys.readouterr().out.strip())
    assert adapter == tmp_path / "a" / f"{job_id}-step-3-adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json",
                                                         "adapter_model.safetensors"]
    assert main(["checkpoints", "download", job_id, "--checkpoint", ckpt,
                 "--output", str(tmp_path / "m")]) == 0
    merged = Path(capsys.readouterr().out.strip())
    assert sorted(p.name for p in merged.iterdir()) == ["config.json", "model.safetensors",
                                                        "tokenizer.json"]
