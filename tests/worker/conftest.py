"""Worker tests: a migrated database (each backend), an artifact store, and a queued job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_fixtures import *  # noqa: F403
from worker_helpers import WorkerEnv

from sage_core.settings import Settings


@pytest.fixture
def env(db_url: str, tmp_path: Path, models_dir: Path) -> Iterator[WorkerEnv]:
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, models_dir=models_dir,
                        device="cpu")
    worker_env = WorkerEnv(settings)
    yield worker_env
    worker_env.engine.dispose()
