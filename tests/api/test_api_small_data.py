"""n_epochs and validation_split "auto" as a job shows them: resolved from the file's size."""

from __future__ import annotations

import json

from api_helpers import Service

ROWS = b"".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}).encode() + b"\n"
                for i in range(240))


def test_job_shows_concrete_epochs_and_split(service: Service) -> None:
    big = service.upload(ROWS)["id"]
    job = service.create_job(training_file=big)
    # 240 rows: 24 held out, 216 left at 32 a step: 7 steps an epoch, 10 epochs (the cap)
    assert job["hyperparameters"]["n_epochs"] == 10
    assert job["hyperparameters"]["validation_split"] == 0.1
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 10
    small = service.create_job()  # 6 rows: nothing held out
    assert small["hyperparameters"]["validation_split"] == 0
    given = service.create_job(training_file=big,
                               hyperparameters={"n_epochs": 2, "validation_split": 0.2})
    assert (given["hyperparameters"]["n_epochs"],
            given["hyperparameters"]["validation_split"]) == (2, 0.2)
    valid = service.upload()["id"]
    with_file = service.create_job(training_file=big, validation_file=valid)
    assert with_file["hyperparameters"]["validation_split"] == 0
    assert with_file["hyperparameters"]["n_epochs"] == 10  # 240 rows: 8 steps an epoch


def test_a_split_with_a_validation_file_is_a_400(service: Service) -> None:
    train = service.upload(ROWS)["id"]
    valid = service.upload()["id"]
    for where, body in (
            ("hyperparameters.validation_split",
             {"hyperparameters": {"validation_split": 0.1}}),
            ("method.supervised.hyperparameters.validation_split",
             {"method": {"type": "supervised", "supervised": {
                 "hyperparameters": {"validation_split": 0.1}}}})):
        response = service.client.post(
            "/v1/fine_tuning/jobs", headers=service.auth(),
            json={"model": "tiny-bert", "training_file": train, "validation_file": valid,
                  **body})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == where
