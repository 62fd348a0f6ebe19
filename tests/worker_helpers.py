"""Rows for the tests of job running (worker, supervision, executor), written straight to the
database and the artifact store; the `env` fixture that holds them; and a stand-in for a
job's process."""

from __future__ import annotations

import json
import random
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sage_core.artifacts import LocalArtifactStore, get_artifact_store
from sage_core.db.events import add_event
from sage_core.db.ids import FILE, JOB, new_id
from sage_core.db.keys import create_key
from sage_core.db.models import File, Job, JobEvent, JobStatus, utcnow
from sage_core.db.session import make_engine, make_session_factory
from sage_core.schemas import Hyperparameters, JobSpec, Resources
from sage_core.settings import Settings

SPAM_WORDS = ("free", "win", "prize", "call", "now", "text", "stop", "cash", "claim", "urgent",
              "reply", "offer")
HAM_WORDS = ("good", "hello", "see", "later", "home", "ok", "fine", "yes", "love", "movie")


def spam_rows(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        spam = i % 2 == 0
        pool = SPAM_WORDS if spam else HAM_WORDS
        text = " ".join(rng.choice(pool) for _ in range(6))
        lines.append(json.dumps({"text": text, "label": "spam" if spam else "ham"}))
    return ("\n".join(lines) + "\n").encode()


class JobRows:
    """Reading a job's rows back, for tests that watch a runner or a worker from outside."""

    sessions: sessionmaker[Session]

    def job(self, job_id: str) -> Job:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def events(self, job_id: str) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)
                                  .order_by(JobEvent.created_at, JobEvent.id)))


class WorkerEnv(JobRows):
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store: LocalArtifactStore = get_artifact_store(settings)
        self.engine = make_engine(settings.resolved_database_url)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        with self.sessions.begin() as s:
            self.key, _ = create_key(s, "worker-test")

    def add_file(self, data: bytes) -> str:
        file_id = new_id(FILE)
        key = f"files/{file_id}.jsonl"
        size = self.store.put_bytes(key, data)
        with self.sessions.begin() as s:
            s.add(File(id=file_id, owner_id=self.key.id, filename="train.jsonl",
                       purpose="fine-tune", bytes=size, storage_key=key,
                       task="text-classification"))
        return file_id

    def add_job(self, rows: int = 32, validation: bool = True, model: str = "tiny-bert",
                gpus: int = 1, **hyperparameters: Any) -> str:
        train = self.add_file(spam_rows(rows))
        valid = self.add_file(spam_rows(16, seed=1)) if validation else None
        hp = {"n_epochs": 2, "batch_size": 8, "max_seq_length": 16, **hyperparameters}
        spec = JobSpec(model=model, seed=1, hyperparameters=Hyperparameters(**hp),
                       resources=Resources(gpus=gpus)).resolve()
        job_id = new_id(JOB)
        with self.sessions.begin() as s:
            s.add(Job(id=job_id, owner_id=self.key.id, model=model, task=spec.task,
                      spec=spec.model_dump(mode="json"), seed=1, suffix="t",
                      training_file_id=train, validation_file_id=valid,
                      status=JobStatus.QUEUED, queued_at=utcnow(),
                      artifact_prefix=f"jobs/{job_id}", result_file_ids=[]))
            add_event(s, job_id, "created")
        return job_id



@pytest.fixture
def env(db_url: str, tmp_path: Path, models_dir: Path) -> Iterator[WorkerEnv]:
    """A migrated database (each backend), an artifact store, and a key to add jobs with."""
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, models_dir=models_dir,
                        device="cpu")
    worker_env = WorkerEnv(settings)
    yield worker_env
    worker_env.engine.dispose()


# Stand-in for `python -m worker run JOB_ID --worker-id OWNER --parent-pid PID`, as FAKE_MODE
# says: no-start (exits 2 before claiming), crash (claims, exits 3), hang (claims, writes its
# pid to FAKE_PIDFILE and sleeps, ignoring cancel and SIGTERM, with a child of its own whose
# pid goes to FAKE_PIDFILE.child), done (claims and exits 0 leaving the job running),
# record (claims, writes "SAGETRAIN_JOB_SLOTS;CUDA_VISIBLE_DEVICES" to FAKE_PIDFILE,
# and succeeds).
FAKE_JOB_PROCESS = """\
import os, signal, subprocess, sys, time
from sage_core.db import transitions
from sage_core.db.session import get_engine, make_session_factory
from sage_core.settings import get_settings
job_id, owner = sys.argv[4], sys.argv[6]
mode = os.environ["FAKE_MODE"]
if mode == "no-start":
    sys.exit(2)
with make_session_factory(get_engine(get_settings())).begin() as s:
    transitions.claim(s, job_id, owner=owner, lease_seconds=60)
if mode == "record":
    open(os.environ["FAKE_PIDFILE"], "w").write(";".join(
        os.environ.get(name, "-") for name in ("SAGETRAIN_JOB_SLOTS", "CUDA_VISIBLE_DEVICES")))
    with make_session_factory(get_engine(get_settings())).begin() as s:
        transitions.succeed(s, job_id, owner=owner)
if mode == "crash":
    os._exit(3)
if mode == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.environ["FAKE_PIDFILE"] + ".child", "w").write(str(child.pid))
    open(os.environ["FAKE_PIDFILE"], "w").write(str(os.getpid()))
    time.sleep(600)
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    """An executable that plays a job's process (FAKE_JOB_PROCESS) when run as `python`."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_JOB_PROCESS))
    script.chmod(0o755)
    return str(script)


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet waited for counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" in status.read_text()
    except OSError:
        return True
