"""Settings from the environment (prefix SAGETRAIN_), read once through `get_settings()`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAGETRAIN_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("sagetrain-data"), description="Database, artifacts, logs")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite at DATA_DIR/sagetrain.db"
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis://...); unset: run jobs with the local executor"
    )
    artifacts_dir: Path | None = Field(None, description="Artifact store; default DATA_DIR/artifacts")
    models_dir: Path | None = Field(None, description="Folders of extra base models, one per name")
    max_upload_bytes: int = Field(100 * 1024 * 1024, description="Largest accepted upload")
    max_file_rows: int = Field(1_000_000, description="Most rows in one training file")
    allow_hub_models: bool = Field(
        False, description="Resolve unknown names as Hugging Face hub ids (needs network)"
    )
    device: str | None = Field(None, description="Torch device for training; default: cuda if any")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sagetrain.db').resolve()}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
