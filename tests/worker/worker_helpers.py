"""Rows for worker tests, written straight to the database and the artifact store."""

from __future__ import annotations

import json
import random
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sage_core.artifacts import LocalArtifactStore, get_artifact_store
from sage_core.db.events import add_event
from sage_core.db.ids import FILE, JOB, new_id
from sage_core.db.keys import create_key
from sage_core.db.models import File, Job, JobEvent, JobStatus, utcnow
from sage_core.db.session import make_engine, make_session_factory
from sage_core.schemas import Hyperparameters, JobSpec
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
                **hyperparameters: Any) -> str:
        train = self.add_file(spam_rows(rows))
        valid = self.add_file(spam_rows(16, seed=1)) if validation else None
        hp = {"n_epochs": 2, "batch_size": 8, "max_seq_length": 16, **hyperparameters}
        spec = JobSpec(model=model, seed=1, hyperparameters=Hyperparameters(**hp)).resolve()
        job_id = new_id(JOB)
        with self.sessions.begin() as s:
            s.add(Job(id=job_id, owner_id=self.key.id, model=model, task=spec.task,
                      spec=spec.model_dump(mode="json"), seed=1, suffix="t",
                      training_file_id=train, validation_file_id=valid,
                      status=JobStatus.QUEUED, queued_at=utcnow(),
                      artifact_prefix=f"jobs/{job_id}", result_file_ids=[]))
            add_event(s, job_id, "created")
        return job_id

