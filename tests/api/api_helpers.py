"""Helpers for the API tests: a test service with two keys, upload and job shortcuts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from process_helpers import pids_with_args, wait_for

from sage_core.settings import Settings
from sagetrain.server_process import free_port, started_server

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


class LiveServer:
    """A real `sagetrain serve` process on a free port, its data under `root`."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], url: str, key: str,
                 env: dict[str, str]):
        self.root, self.proc, self.url, self.key, self.env = root, proc, url, key, env

    @classmethod
    @contextlib.contextmanager
    def start(cls, root: Path, models_dir: Path,
              settings: dict[str, str] | None = None) -> Iterator[LiveServer]:
        """Serve the data folder `root/data` (started again, it resumes what is there), with
        `settings` added to the environment (SAGETRAIN_*)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAGETRAIN_")}
        env.update(SAGETRAIN_DATA_DIR=str(root / "data"), SAGETRAIN_MODELS_DIR=str(models_dir),
                   SAGETRAIN_DEVICE="cpu", **(settings or {}))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cli = [sys.executable, "-m", "sagetrain.cli"]
        with started_server([*cli, "serve", "--port", str(port), "--no-access-log"], env=env,
                            url=url, log_path=root / "server.log") as proc:
            out = subprocess.run([*cli, "keys", "create", "--name", "e2e"], env=env,
                                 check=True, capture_output=True, text=True).stdout
            yield cls(root, proc, url, out.strip().splitlines()[-1], env)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.key}"})

    def log_text(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")

    def wait_training(self, client: httpx.Client, job_id: str, *, past_step: int = 0,
                      timeout: float = 120) -> None:
        """Wait until the job runs past `past_step`; a job that ends or fails first is an
        error naming it, with the server's log."""

        def training() -> bool:
            job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            assert job["status"] in ("queued", "running"), (job, self.log_text())
            return job["status"] == "running" and job["progress"]["step"] > past_step

        wait_for(training, timeout, "the job to start training")


def worker_pids(job_id: str) -> list[int]:
    """Processes running `python -m worker run <job_id>`."""
    return pids_with_args("worker", job_id)
