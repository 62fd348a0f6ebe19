"""Settings from the environment (prefix SAGETRAIN_), read once through `get_settings()`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAGETRAIN_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("sagetrain-data"), description="Database, artifacts, logs")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite at DATA_DIR/sagetrain.db"
    )
    database_pool_size: int = Field(
        40, ge=1, description="Database connections the API server keeps for reuse, opened as "
        "needed: at least the requests it serves at once (its 40 worker threads). Past it, a "
        "connection is opened and closed per use, which costs PostgreSQL a new backend each "
        "time (under load, a third of a job creation's throughput)"
    )
    database_max_overflow: int = Field(
        10, ge=0, description="Connections the API server may open past the pool, closed after "
                              "use (background threads: webhooks, dispatch, live streams)"
    )
    database_lock_retry_seconds: float = Field(
        300.0, ge=0, description="SQLite: how long a job's process (and the reaper, a worker) "
        "keeps trying to take a locked database, with backoff, before it gives up; the API "
        "answers 503 with Retry-After instead"
    )
    max_json_body_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest JSON request body (413 above it); uploads "
        "have MAX_UPLOAD_BYTES"
    )
    body_timeout_seconds: float = Field(
        1800.0, gt=0, description="Longest time one request body (an upload) may take to "
        "arrive; past it the request gets 408 and its connection is closed"
    )
    body_min_bytes_per_second: int = Field(
        10_000, ge=0, description="Slowest average rate a request body may arrive at, after "
        "its first BODY_GRACE_SECONDS; slower gets 408 and the connection closed (0: no minimum)"
    )
    body_grace_seconds: float = Field(
        10.0, ge=0, description="Seconds a body may arrive at any rate before "
        "BODY_MIN_BYTES_PER_SECOND applies"
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="`serve`: seconds an idle HTTP connection is kept open between "
        "requests"
    )
    header_timeout: float = Field(
        10.0, gt=0, description="`serve`: seconds a new connection may take to send a "
        "request's line and headers before it is closed"
    )
    shutdown_timeout_seconds: float = Field(
        30.0, gt=0, description="`serve` and `worker`: seconds a stop (SIGTERM, Ctrl-C) may "
        "take: requests in flight and running jobs get this long to finish or hand back, then "
        "the process exits; a second signal exits at once"
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis://...); unset: run jobs with the local executor"
    )
    artifacts_dir: Path | None = Field(
        None, description="Artifact store; default DATA_DIR/artifacts"
    )
    models_dir: Path | None = Field(None, description="Folders of extra base models, one per name")
    max_upload_bytes: int = Field(100 * 1024 * 1024, description="Largest accepted upload")
    max_file_rows: int = Field(1_000_000, description="Most rows in one training file")
    # Per-key limits (sage_core/db/limits.py): over one, a request gets 429 with Retry-After.
    # Unset: unlimited. A key's own quota (`keys create --max-running-jobs/--max-storage`)
    # replaces the server's default for that key.
    job_rate_limit: int | None = Field(
        None, ge=1, description="Fine-tuning jobs one key may create per RATE_LIMIT_WINDOW "
        "seconds (a sweep counts once); unset: unlimited"
    )
    file_rate_limit: int | None = Field(
        None, ge=1, description="Files one key may upload per RATE_LIMIT_WINDOW seconds; "
        "unset: unlimited"
    )
    rate_limit_window: float = Field(
        60.0, gt=0, description="Seconds over which JOB_RATE_LIMIT and FILE_RATE_LIMIT count"
    )
    max_running_jobs: int | None = Field(
        None, ge=1, description="Default quota of a key's jobs queued or running at once "
        "(validating_files, queued, running; a sweep's children count, its parent does not; "
        "paused jobs do not); unset: unlimited"
    )
    max_storage_bytes: int | None = Field(
        None, ge=0, description="Default quota of the bytes a key's files may take in the "
        "artifact store (10G, 500M or bytes); unset: unlimited"
    )
    allow_hub_models: bool = Field(
        False, description="Resolve unknown names as Hugging Face hub ids (needs network)"
    )
    device: str | None = Field(None, description="Torch device for training; default: cuda if any")
    # Distributed running (Celery workers over Redis); see sage_core/broker.py.
    task_queue: str = Field("gpu", description="Celery queue that jobs are sent to")
    broker_key_prefix: str = Field(
        "", description="Prefix for every Redis key of the broker (to share one Redis)"
    )
    broker_visibility_timeout: int = Field(
        3600, gt=0, description="Seconds before Redis hands an unacknowledged job message to "
        "another worker; harmless while the job runs, because its lease decides who runs it"
    )
    lease_seconds: float = Field(
        120.0, gt=0, description="A running job's lease; a worker silent this long loses it"
    )
    max_lost_leases: int = Field(
        3, ge=1, description="Times a job may lose its worker before it fails (worker_lost)"
    )
    reaper_interval: float = Field(
        15.0, gt=0, description="Seconds between scans for expired leases and stuck jobs"
    )
    redispatch_after: float = Field(
        60.0, gt=0, description="Seconds a queued job may wait with no message on the broker "
        "before it is sent again"
    )
    worker_gpus: str | None = Field(
        None, description="GPUs a worker hands out, '0,1': a job asking for N GPUs takes N "
        "of them at once (CUDA_VISIBLE_DEVICES); see sage_core/slots.py"
    )
    worker_slots: int | None = Field(
        None, ge=1, description="On a worker without GPUs (WORKER_GPUS unset): the processes "
        "it hands out, a job asking for N 'GPUs' taking N of them; default 1"
    )
    gpu_wait_seconds: float = Field(
        900.0, gt=0, description="Seconds a job asking for more GPUs than any live worker has "
        "stays queued, waiting for one to join, before it fails (insufficient_gpus)"
    )
    cancel_grace_seconds: float = Field(
        10.0, gt=0, description="Seconds a cancelled or shut-down job may take to stop "
        "before its process is killed"
    )
    webhook_interval: float = Field(
        2.0, gt=0, description="Seconds between rounds of the webhook sender in `serve`"
    )
    webhook_timeout: float = Field(10.0, gt=0, description="Seconds one webhook POST may take")
    webhook_max_attempts: int = Field(
        8, ge=1, description="Tries of one webhook delivery before it is marked failed"
    )
    webhook_backoff_base: float = Field(
        10.0, gt=0, description="Seconds before a failed webhook's first retry; doubles each try"
    )
    webhook_backoff_cap: float = Field(
        3600.0, gt=0, description="Longest wait between two tries of a webhook delivery"
    )
    webhook_max_endpoints: int = Field(
        20, ge=1, description="Webhook endpoints one API key may register; past it, 400"
    )
    allow_private_targets: bool = Field(
        False, description="Let webhooks and user-given MLflow tracking URIs call loopback, "
        "link-local (169.254.0.0/16), private and unspecified addresses: for local "
        "development only, since a key could then reach the server's internal network"
    )
    stream_token_secret: str | None = Field(
        None, description="Signs the short-lived tokens that let a browser's EventSource read "
        "a job's stream (POST .../stream_token); default: a random secret per API process. "
        "Set the same value on every API server behind one address"
    )
    artifacts_url: str | None = Field(
        None, description="s3://bucket/prefix: keep artifacts in an S3-compatible store "
        "instead of ARTIFACTS_DIR"
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of the S3-compatible service (MinIO: http://minio:9000)"
    )
    # Run tracking (a job's `integrations`; see worker/tracking/). W&B reads its own
    # WANDB_API_KEY, WANDB_MODE and WANDB_DIR (default here: DATA_DIR/wandb).
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI for jobs whose mlflow integration names none: "
        "an http(s) server, or a store on the workers' disks (sqlite:////srv/mlflow.db); "
        "unset: such a job is refused. Users may name only http(s) servers"
    )

    @field_validator("job_rate_limit", "file_rate_limit", "max_running_jobs",
                     "max_storage_bytes", mode="before")
    @classmethod
    def _limit(cls, value: object, info: ValidationInfo) -> object:
        """An empty value is no limit (docker compose passes unset variables as ""); a
        storage quota may be written as a size (10G)."""
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and info.field_name == "max_storage_bytes":
            from sage_core.sizes import parse_size

            return parse_size(value)
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sagetrain.db').resolve()}"

    @property
    def heartbeat_seconds(self) -> float:
        """How often a running job renews its lease: a few beats per lease, so one slow
        beat does not lose it."""
        return min(15.0, self.lease_seconds / 4)

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    @property
    def default_wandb_dir(self) -> Path:
        """Where W&B writes its local run folders when WANDB_DIR is unset."""
        return (self.data_dir / "wandb").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
