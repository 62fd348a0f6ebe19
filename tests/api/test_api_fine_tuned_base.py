"""`model: "ft:..."`: a job may start from a fine-tuned model of its own key, on its task."""

from __future__ import annotations

from api_helpers import Service

from sage_core.db import transitions
from sage_core.db.session import make_engine, make_session_factory


def _succeeded(service: Service, key: str | None = None, **body: object) -> str:
    """A job of `key` marked succeeded as the runner would; its fine-tuned model name."""
    job = service.create_job(key=key, suffix="base", **body)
    name = f"ft:tiny-bert:base:{job['id'].removeprefix('ftjob-')}"
    engine = make_engine(service.settings.resolved_database_url)
    with make_session_factory(engine).begin() as s:
        transitions.claim(s, job["id"], owner="w", lease_seconds=60)
        transitions.succeed(s, job["id"], owner="w", fine_tuned_model=name)
    engine.dispose()
    return name


def _post(service: Service, key: str | None = None, **body: object):  # type: ignore[no-untyped-def]
    body.setdefault("training_file", service.upload(key=key)["id"])
    return service.client.post("/v1/fine_tuning/jobs", headers=service.auth(key), json=body)


def test_own_fine_tuned_model_is_accepted(service: Service) -> None:
    name = _succeeded(service)
    job = service.create_job(model=name)
    assert job["model"] == name and job["status"] == "queued"
    assert job["task"] == "text-classification"
    assert service.dispatcher.dispatched[-1] == job["id"]


def test_another_keys_or_an_unknown_fine_tuned_model_is_unknown(service: Service) -> None:
    theirs = _succeeded(service, key=service.other_key)
    for name in (theirs, "ft:tiny-bert::nope"):
        r = _post(service, model=name)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "model" and error["code"] == "model_not_found"
        assert f"unknown model '{name}'" in error["message"]
        assert "tiny-bert" not in error["message"].replace(name, "")  # lists nothing
    assert len(service.dispatcher.dispatched) == 1  # the other key's own job only


def test_a_job_not_succeeded_is_no_base_model(service: Service) -> None:
    job = service.create_job()
    r = _post(service, model=f"ft:tiny-bert::{job['id'].removeprefix('ftjob-')}")
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_the_task_must_be_the_fine_tuned_models(service: Service) -> None:
    csv = b"text,label\nhello,0.5\nbye,1.5\nok,2.0\n"
    name = _succeeded(service, training_file=service.upload(csv, name="s.csv")["id"],
                      task="text-regression")
    r = _post(service, model=name)  # the default task, text-classification
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "task"
    assert "'text-classification'" in error["message"] and "'text-regression'" in error["message"]
    regression = service.upload(csv, name="s.csv")["id"]
    assert _post(service, model=name, training_file=regression,
                 task="text-regression").status_code == 200
