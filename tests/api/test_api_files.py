"""/v1/files: validation on upload, size limit, listing, content, delete."""

from __future__ import annotations

from api_helpers import TRAIN_JSONL, Service


def test_upload_get_content_delete(service: Service) -> None:
    created = service.upload(name="../../etc/passwd.jsonl")
    assert created["object"] == "file" and created["id"].startswith("file-")
    assert created["status"] == "processed" and created["purpose"] == "fine-tune"
    assert created["bytes"] == len(TRAIN_JSONL)
    assert created["filename"] == "../../etc/passwd.jsonl"  # metadata only
    assert created["stats"]["rows"] == 6
    assert created["stats"]["label_counts"] == {"ham": 3, "spam": 3}
    assert created["stats"]["task"] == "text-classification"
    stored = list((service.settings.data_dir / "artifacts" / "files").iterdir())
    assert [p.name for p in stored] == [f"{created['id']}.jsonl"]

    c = service.client
    got = c.get(f"/v1/files/{created['id']}", headers=service.auth()).json()
    assert got == created
    content = c.get(f"/v1/files/{created['id']}/content", headers=service.auth())
    assert content.status_code == 200 and content.content == TRAIN_JSONL
    deleted = c.delete(f"/v1/files/{created['id']}", headers=service.auth())
    assert deleted.json() == {"id": created["id"], "object": "file", "deleted": True}
    assert c.get(f"/v1/files/{created['id']}", headers=service.auth()).status_code == 404
    assert not list((service.settings.data_dir / "artifacts" / "files").iterdir())


def test_bad_file_names_the_lines(service: Service) -> None:
    data = (b'{"text": "fine", "label": "a"}\n{"text": "", "label": "b"}\n'
            b'not json\n{"text": "x", "label": "b"}\n')
    r = service.client.post("/v1/files", headers=service.auth(),
                            files={"file": ("bad.jsonl", data)}, data={"purpose": "fine-tune"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_file"
    assert "line 2" in error["message"] and "line 3" in error["message"]
    assert error["param"] == "file"
    assert not list((service.settings.data_dir / "artifacts" / "files").glob("*"))


def test_csv_and_regression(service: Service) -> None:
    csv = b"text,label\nhello,0.5\nbye,1.5\nok,2.0\n"
    as_class = service.client.post(
        "/v1/files", headers=service.auth(), files={"file": ("s.csv", csv)},
        data={"purpose": "fine-tune"})
    assert as_class.status_code == 200  # "0.5" is a valid class name in a CSV
    created = service.upload(csv, name="sts.csv", task="text-regression")
    assert created["stats"]["task"] == "text-regression"
    assert created["stats"]["label_max"] == 2.0 and created["stats"]["format"] == "csv"


def test_purpose_and_task_are_checked(service: Service) -> None:
    c = service.client
    r = c.post("/v1/files", headers=service.auth(), files={"file": ("t.jsonl", TRAIN_JSONL)},
               data={"purpose": "assistants"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = c.post("/v1/files", headers=service.auth(), files={"file": ("t.jsonl", TRAIN_JSONL)},
               data={"purpose": "fine-tune", "task": "../x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "task"
    r = c.post("/v1/files", headers=service.auth(), data={"purpose": "fine-tune"},
               files={"other": ("t.jsonl", TRAIN_JSONL)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = c.post("/v1/files", headers=service.auth(), json={"purpose": "fine-tune"})
    assert r.status_code == 400


def test_size_limit_is_413(service: Service) -> None:
    row = b'{"text": "%s", "label": "a"}\n' % (b"x" * 500)
    big = row * (service.settings.max_upload_bytes // len(row) + 2)
    r = service.client.post("/v1/files", headers=service.auth(),
                            files={"file": ("big.jsonl", big)}, data={"purpose": "fine-tune"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "file_too_large"
    scratch = service.settings.data_dir / "artifacts" / ".tmp"
    assert not list(scratch.iterdir())


def test_list_pages_newest_first(service: Service) -> None:
    ids = [service.upload()["id"] for _ in range(5)]
    c = service.client
    first = c.get("/v1/files?limit=2", headers=service.auth()).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"]
    assert first["object"] == "list" and first["last_id"] == ids[3]
    rest = c.get(f"/v1/files?limit=10&after={first['last_id']}", headers=service.auth()).json()
    assert [f["id"] for f in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
    other = c.get("/v1/files", headers=service.auth(service.other_key)).json()
    assert other["data"] == []
