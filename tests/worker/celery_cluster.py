"""A small sagetrain cluster for the Celery tests: a throwaway PostgreSQL database, a Redis
database with this run's own key prefix and queue, real `sagetrain worker` processes (each
with its own data folder, as if on its own machine, sharing the artifact store), and the
API in-process with a CeleryDispatcher. The artifact store is an S3-compatible server, so the
workers share nothing on disk: as on separate machines.

Leases, reaper rounds and re-dispatch are a few seconds long, so crash recovery is quick.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from process_helpers import pids_with_args, wait_for
from sample_data import rows
from service_fixtures import unreachable
from sqlalchemy import select
from worker_helpers import JobRows

from sage_core.db.models import Job, JobMetric
from sage_core.db.session import make_engine, make_session_factory
from sage_core.settings import Settings
from sage_core.testing import throwaway_postgres as new_postgres_database

PG_ADMIN_URL = os.environ.get(
    "SAGETRAIN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
FAST = {  # settings for quick recovery in tests
    "lease_seconds": "3", "reaper_interval": "1", "redispatch_after": "2",
    "cancel_grace_seconds": "5", "device": "cpu", "gpu_wait_seconds": "6",
}


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A migrated PostgreSQL database of its own, dropped afterwards."""
    from sage_core.db.migrate import upgrade

    with ExitStack() as stack:
        try:
            url = stack.enter_context(new_postgres_database(PG_ADMIN_URL, "sagetrain_celery"))
        except Exception as exc:
            unreachable("PostgreSQL", f"{type(exc).__name__}: {exc}".splitlines()[0])
        upgrade(url)
        yield url


class WorkerProcess:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path, data_dir: Path):
        self.name, self.proc, self.log, self.data_dir = name, proc, log, data_dir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Cluster(JobRows):
    def __init__(self, root: Path, database_url: str, broker_url: str, prefix: str,
                 models_dir: Path, artifacts: dict[str, str]):
        """`artifacts`: the environment for the shared artifact store (S3 settings and
        credentials)."""
        self.root = root
        queue = f"jobs-{secrets.token_hex(3)}"
        common = {"database_url": database_url, "broker_url": broker_url,
                  "broker_key_prefix": prefix, "task_queue": queue,
                  "models_dir": str(models_dir), **FAST}
        self.worker_env = {k: v for k, v in os.environ.items()
                           if not k.startswith("SAGETRAIN_")}
        self.worker_env.update({f"SAGETRAIN_{k.upper()}": v for k, v in common.items()})
        self.worker_env.update(artifacts)
        common.update({k.removeprefix("SAGETRAIN_").lower(): v for k, v in artifacts.items()
                       if k.startswith("SAGETRAIN_")})
        self.settings = Settings(data_dir=root / "api", **common)  # type: ignore[arg-type]
        self.workers: list[WorkerProcess] = []
        self.engine = make_engine(database_url)
        self.sessions = make_session_factory(self.engine)

    # --- workers ---------------------------------------------------------------------------

    def start_worker(self, name: str, *args: str) -> WorkerProcess:
        """A `sagetrain worker` named NAME@test, with more of its command line in `args`."""
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        env = {**self.worker_env, "SAGETRAIN_DATA_DIR": str(data_dir)}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sagetrain.cli", "worker", "--hostname",
                 f"{name}@test", "--loglevel", "info", *args],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        worker = WorkerProcess(name, proc, log, data_dir)
        self.workers.append(worker)
        return worker

    def wait_ready(self, *workers: WorkerProcess, timeout: float = 90) -> None:
        for worker in workers:
            def ready(w: WorkerProcess = worker) -> bool:
                assert w.proc.poll() is None, f"worker {w.name} exited:\n{w.text()}"
                return f"{w.name}@test ready." in w.text()

            wait_for(ready, timeout, f"worker {worker.name} to be ready")

    def worker_holding(self, job_id: str) -> WorkerProcess:
        """The worker whose job process holds the job's lease (owner celery:host:pid:...)."""
        owner = self.job(job_id).lease_owner or ""
        match = re.match(r"^celery:[^:]+:(\d+):", owner)
        assert match, f"not held by a Celery worker: {owner!r}"
        pid = int(match.group(1))
        (worker,) = [w for w in self.workers if w.pid == pid]
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.engine.dispose()

    def logs(self) -> str:
        return "\n".join(f"----- {w.name}\n{w.text()[-6000:]}" for w in self.workers)

    # --- the database --------------------------------------------------------------------------

    def metric_rows(self, job_id: str) -> list[JobMetric]:
        with self.sessions() as s:
            return list(s.scalars(select(JobMetric).where(JobMetric.job_id == job_id)
                                  .order_by(JobMetric.id)))

    def wait_status(self, job_id: str, statuses: set[str], timeout: float) -> Job:
        def reached() -> Job | None:
            job = self.job(job_id)
            return job if job.status in statuses else None

        try:
            return wait_for(reached, timeout, f"job {job_id} to be {'/'.join(statuses)}")
        except AssertionError as exc:
            job = self.job(job_id)
            raise AssertionError(f"{exc}; it is {job.status} {job.error}\n"
                                 f"{self.events(job_id)}\n{self.logs()}") from None


class Api:
    """The HTTP API in-process, sending jobs to the workers by task name."""

    def __init__(self, client: TestClient, key: str):
        self.client, self.key = client, key
        self.headers = {"Authorization": f"Bearer {key}"}

    def upload(self, data: bytes, name: str = "train.jsonl") -> str:
        r = self.client.post("/v1/files", headers=self.headers, files={"file": (name, data)},
                             data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def create_job(self, n_rows: int, resources: dict[str, Any] | None = None,
                   **hyperparameters: Any) -> str:
        validation = hyperparameters.pop("validation_rows", None)
        body: dict[str, Any] = {
            "model": "tiny-bert", "training_file": self.upload(rows(n_rows)), "suffix": "c",
            "hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_length": 16,
                                "learning_rate": 1e-3, **hyperparameters}}
        if resources is not None:
            body["resources"] = resources
        if validation:
            body["validation_file"] = self.upload(rows(validation, seed=1), "valid.jsonl")
        r = self.client.post("/v1/fine_tuning/jobs", headers=self.headers, json=body)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def get(self, path: str) -> Any:
        r = self.client.get(path, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str) -> Any:
        r = self.client.post(path, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()


def job_pids(job_id: str) -> list[int]:
    """Processes whose command line names the job."""
    return pids_with_args(job_id)


def kill_quietly(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
