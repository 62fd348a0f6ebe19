"""Odd input gets a 4xx that says what is wrong, never a 500 (issue 17, items 6 and 12):
deeply nested or huge-number JSONL, odd Last-Event-ID digits, NUL bytes (which PostgreSQL
refuses to store), labels whose mean overflows, non-finite floats and unhelpful messages."""

from __future__ import annotations

import pytest
from api_helpers import Service
from fastapi.testclient import TestClient


def _upload(service: Service, data: bytes, name: str = "train.jsonl", **fields: str) -> dict:
    r = service.client.post("/v1/files", headers=service.auth(), files={"file": (name, data)},
                            data={"purpose": "fine-tune", **fields})
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_deeply_nested_jsonl_is_a_400_naming_the_line(service: Service) -> None:
    line = b'{"text": "a", "label": "x"}\n'
    nested = b"[" * 30_000 + b"]" * 30_000  # the test app takes 64 KiB
    error = _upload(service, line + nested + b"\n")
    assert "line 2" in error["message"] and "nested" in error["message"], error


def test_an_integer_label_of_5000_digits_is_a_400(service: Service) -> None:
    line = b'{"text": "a", "label": "x"}\n'
    error = _upload(service, line + b'{"text": "b", "label": ' + b"7" * 5000 + b"}\n")
    assert "line 2" in error["message"] and "digits" in error["message"], error


def test_regression_labels_whose_mean_overflows_are_a_400(service: Service) -> None:
    rows = b"".join(b'{"text": "t%d", "label": 1e308}\n' % i for i in range(4))
    error = _upload(service, rows, task="text-regression")
    assert "line 1" in error["message"] and "float32" in error["message"], error


@pytest.mark.parametrize("label", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_regression_labels_are_a_400(service: Service, label: bytes) -> None:
    rows = b"".join(b'{"text": "t%d", "label": %s}\n' % (i, label) for i in range(4))
    _upload(service, rows, task="text-regression")


@pytest.mark.parametrize("value", [b"0.\xb2", b"0.\xb2\xb3", "0.١".encode()])
def test_unicode_digits_in_last_event_id_are_a_400(service: Service, value: bytes) -> None:
    job_id = service.create_job()["id"]
    r = service.client.get(f"/v1/fine_tuning/jobs/{job_id}/stream",
                           headers=service.auth() | {"Last-Event-ID": value})  # type: ignore[dict-item]
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "Last-Event-ID"


@pytest.mark.parametrize("token", ["k.%C2%B2.sig", "k.1.%C2%B2"])
def test_non_ascii_in_a_stream_token_is_a_401(service: Service, token: str) -> None:
    job_id = service.create_job()["id"]
    r = service.client.get(f"/v1/fine_tuning/jobs/{job_id}/stream?token={token}")
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("path", [
    "/v1/files/file-%00x", "/v1/files/file-%00x/content", "/v1/fine_tuning/jobs/ftjob-%00",
    "/v1/fine_tuning/jobs/ftjob-%00/events", "/v1/fine_tuning/jobs/a/checkpoints/%00",
    "/v1/models/ft%00x",
])
def test_a_nul_byte_in_an_id_is_a_404(service: Service, path: str) -> None:
    client = TestClient(service.client.app, raise_server_exceptions=False)
    r = client.get(path, headers=service.auth())
    assert r.status_code == 404, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_nul_byte_in_an_id_is_refused_before_the_key_is_looked_up(service: Service) -> None:
    client = TestClient(service.client.app, raise_server_exceptions=False)
    r = client.get("/v1/fine_tuning/jobs/ftjob-%00", headers=service.auth("sk-wrong"))
    assert r.status_code in (401, 404), r.text


def test_a_nul_byte_in_a_query_is_a_400(service: Service) -> None:
    client = TestClient(service.client.app, raise_server_exceptions=False)
    for query in ("after=ftjob-%00", "metadata[k]=%00"):
        r = client.get(f"/v1/fine_tuning/jobs?{query}", headers=service.auth())
        assert r.status_code == 400, (query, r.text)


@pytest.mark.parametrize("body", [
    {"suffix": "a\x00b"},
    {"metadata": {"k": "v\x00"}},
    {"metadata": {"k\x00": "v"}},
    {"training_file": "file-\x00"},
    {"model": "tiny-\x00bert"},
])
def test_a_nul_byte_in_a_body_string_is_a_400(service: Service, body: dict) -> None:
    client = TestClient(service.client.app, raise_server_exceptions=False)
    full = {"model": "tiny-bert", "training_file": service.upload()["id"]} | body
    r = client.post("/v1/fine_tuning/jobs", headers=service.auth(), json=full)
    assert r.status_code in (400, 404), r.text
    assert "NUL" in r.json()["error"]["message"] or r.status_code == 404


def test_a_nul_byte_in_a_webhook_url_is_a_400(service: Service) -> None:
    client = TestClient(service.client.app, raise_server_exceptions=False)
    r = client.post("/v1/webhooks", headers=service.auth(),
                    json={"url": "https://example.org/\x00"})
    assert r.status_code == 400, r.text


def test_an_empty_body_says_a_body_is_needed(service: Service) -> None:
    r = service.client.post("/v1/fine_tuning/jobs", headers=service.auth())
    assert r.status_code == 400
    error = r.json()["error"]
    assert "None" not in error["message"] and "body" in error["message"], error
    assert error["param"] is None


def test_invalid_json_names_no_param_and_says_where(service: Service) -> None:
    r = service.client.post("/v1/fine_tuning/jobs", headers=service.auth() | {
        "Content-Type": "application/json"}, content=b'{"model": }')
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] is None, error
    assert "not valid JSON" in error["message"] and "position 10" in error["message"], error


@pytest.mark.parametrize("raw", [
    b'"hyperparameters": {"max_grad_norm": Infinity}',
    b'"hyperparameters": {"max_grad_norm": -Infinity}',
    b'"hyperparameters": {"learning_rate_multiplier": NaN}',
    b'"hyperparameters": {"weight_decay": NaN}',
    b'"sweep": {"learning_rate": [0.001, Infinity]}',
    b'"compare_to": [{"optimizer": "adamw", "learning_rate": [NaN]}]',
])
def test_non_finite_floats_are_refused(service: Service, raw: bytes) -> None:
    file_id = service.upload()["id"]
    body = b'{"model": "tiny-bert", "training_file": "%s", "validation_file": "%s", %s}' % (
        file_id.encode(), file_id.encode(), raw)
    r = service.client.post("/v1/fine_tuning/jobs", headers=service.auth() | {
        "Content-Type": "application/json"}, content=body)
    assert r.status_code == 400, r.text
    assert "finite" in r.text or b"compare_to" in raw, r.json()


@pytest.mark.parametrize("fields", [{"purpose": "fine-\x00tune"},
                                    {"task": "text-\x00classification"}])
def test_a_nul_byte_in_an_upload_form_is_a_400(service: Service, fields: dict) -> None:
    from api_helpers import TRAIN_JSONL

    name = "train.jsonl"
    client = TestClient(service.client.app, raise_server_exceptions=False)
    r = client.post("/v1/files", headers=service.auth(), files={"file": (name, TRAIN_JSONL)},
                    data={"purpose": "fine-tune", **fields})
    assert r.status_code == 400, r.text
    assert service.client.get("/v1/files", headers=service.auth()).json()["data"] == []
    store = service.settings.resolved_artifacts_dir
    assert not [p for p in store.rglob("*") if p.is_file()], "an upload was left behind"


@pytest.mark.parametrize("header", ["Idempotency-Key", "Last-Event-ID"])
def test_a_nul_byte_in_a_header_is_a_400(service: Service, header: str) -> None:
    job_id = service.create_job()["id"]
    client = TestClient(service.client.app, raise_server_exceptions=False)
    if header == "Idempotency-Key":
        r = client.post("/v1/fine_tuning/jobs", headers=service.auth() | {header: "k\x00"},
                        json={"model": "tiny-bert", "training_file": "file-x"})
    else:
        r = client.get(f"/v1/fine_tuning/jobs/{job_id}/stream",
                       headers=service.auth() | {header: "ftevent-\x00.1"})
    assert r.status_code in (400, 404), r.text


def test_a_step_past_a_database_integer_is_a_400(service: Service) -> None:
    """Found by the schemathesis run: SQLite raised OverflowError (a 500)."""
    job_id = service.create_job()["id"]
    client = TestClient(service.client.app, raise_server_exceptions=False)
    r = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics?from_step={2**63}",
                   headers=service.auth())
    assert r.status_code == 400 and r.json()["error"]["param"] == "from_step", r.text
