"""Helpers for the API tests: a test service with two keys, upload and job shortcuts."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi.testclient import TestClient

from sage_core.settings import Settings

TRAIN_JSONL = b"".join(
    b'{"text": "%s", "label": "%s"}\n' % (t.encode(), lab.encode())
    for t, lab in [("win cash now", "spam"), ("see you later", "ham"), ("free prize call", "spam"),
                   ("ok fine", "ham"), ("claim your prize", "spam"), ("hello home", "ham")]
)


@dataclass
class RecordingDispatcher:
    dispatched: list[str] = field(default_factory=list)

    def dispatch(self, job_id: str) -> None:
        self.dispatched.append(job_id)


@dataclass
class Service:
    client: TestClient
    settings: Settings
    dispatcher: RecordingDispatcher
    key: str
    other_key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def upload(self, data: bytes = TRAIN_JSONL, name: str = "train.jsonl",
               key: str | None = None, **fields: str) -> dict:
        response = self.client.post("/v1/files", headers=self.auth(key),
                                    files={"file": (name, data)},
                                    data={"purpose": "fine-tune", **fields})
        assert response.status_code == 200, response.text
        return response.json()

    def create_job(self, key: str | None = None, **body: object) -> dict:
        if "training_file" not in body:
            body["training_file"] = self.upload(key=key)["id"]
        body.setdefault("model", "tiny-bert")
        response = self.client.post("/v1/fine_tuning/jobs", headers=self.auth(key), json=body)
        assert response.status_code == 200, response.text
        return response.json()
