"""Worker tests: a migrated database (each backend), an artifact store, and a queued job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_fixtures import *  # noqa: F403
from worker_helpers import WorkerEnv

from sage_core.settings import Settings, get_settings


@pytest.fixture
def env(db_url: str, tmp_path: Path, models_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerEnv]:
    # The training engine reads the process settings (get_settings) to resolve models.
    monkeypatch.setenv("SAGETRAIN_MODELS_DIR", str(models_dir))
    get_settings.cache_clear()
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, models_dir=models_dir,
                        device="cpu")
    worker_env = WorkerEnv(settings)
    yield worker_env
    worker_env.engine.dispose()
    get_settings.cache_clear()
