"""Request and response bodies. Responses are built from rows by the `from_row` helpers
and declared as `response_model`, so internal columns (hashes, leases, storage keys) never
leak."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sage_core.db.models import (
    Checkpoint,
    File,
    Job,
    JobEvent,
    JobMetric,
    JobStatus,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from sage_core.integration_specs import Integration
from sage_core.names import DEFAULT_TASK, OptimizerName, TaskName
from sage_core.net_guard import check_http_url
from sage_core.schemas import Hyperparameters, Integrations, Resources

T = TypeVar("T")


def ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _estimated_finish(job: Job) -> int | None:
    """The worker's estimate, never in the past while the job runs: a phase that outruns
    it (its next row or phase event moves it on) reads as finishing now."""
    value = job.estimated_finish
    if value is None or job.status != JobStatus.RUNNING:
        return ts(value)
    return ts(max(value, utcnow()))


def _nul_at(value: Any, where: str = "") -> str | None:
    """Where in a JSON value a string (or a key) holds a NUL character, or None."""
    if isinstance(value, str):
        return where or "the body" if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if "\x00" in str(key):
                return path
            if (found := _nul_at(item, path)) is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _nul_at(item, f"{where}[{index}]")) is not None:
                return found
    return None


def refuse_nul(data: Any) -> Any:
    """A before-validator for request bodies: no string may hold a NUL character, which
    PostgreSQL cannot store (and no name, id or setting needs)."""
    where = _nul_at(data)
    if where is not None:
        raise ValueError(f"a NUL character is not allowed in a string (at {where!r})")
    return data


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# --- files -------------------------------------------------------------------------------

class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None
    stats: dict[str, Any] | None = Field(
        None, description="sagetrain: `task`, the task the rows were validated for, and "
                          "their statistics: for text rows, columns and label counts (or "
                          "range); for chat and completion, examples and characters per "
                          "example (chat: messages, messages_per_example, "
                          "examples_with_tools)")

    @classmethod
    def from_row(cls, row: File) -> FilePublic:
        stats = dict(row.stats or {})
        if row.task:
            stats["task"] = row.task
        return cls(id=row.id, bytes=row.bytes, created_at=ts(row.created_at) or 0,
                   filename=row.filename, purpose=row.purpose, status=row.status,
                   stats=stats or None)


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# --- jobs --------------------------------------------------------------------------------

_METADATA_MAX_PAIRS, _METADATA_KEY_MAX, _METADATA_VALUE_MAX = 16, 64, 512


class SweepRequest(BaseModel):
    """sagetrain: run one child job per (learning rate, seed). Only learning_rate and seeds
    can be swept for now; any other key is refused (400 naming sweep.<key>) by
    api/services/sweeps.py, which also checks the values."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    learning_rate: list[float] | None = Field(
        None, description="2 to 8 distinct peak learning rates, each in (0, 1]")
    seeds: list[int] | None = Field(
        None, description="1 to 5 distinct seeds: every (optimizer, learning rate) runs once "
                          "per seed, and the report gives mean, std and paired intervals; "
                          "default: the job's one seed")


class CompareToRequest(BaseModel):
    """One optimizer to compare with, over its own learning-rate grid."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    optimizer: OptimizerName
    learning_rate: list[float] | None = Field(
        None, description="1 to 8 distinct learning rates; default: the optimizer's default "
                          "learning rate times 1/3, 1 and 3")


SUPPORTED_METHODS = ("supervised",)


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = Field(
        None, description="Everything the top-level `hyperparameters` takes; give one or the "
                          "other")


class MethodRequest(BaseModel):
    """OpenAI's `method`. sagetrain trains `supervised` only; its hyperparameters take
    everything the top-level `hyperparameters` takes."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="supervised (dpo and reinforcement are refused)")
    supervised: SupervisedMethod | None = None

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        # Checked before the fields, so that a dpo request is told about its type rather
        # than about its `dpo` object.
        if isinstance(data, dict) and "type" in data and data["type"] not in SUPPORTED_METHODS:
            raise ValueError(f"method type {str(data['type'])[:40]!r} is not supported; "
                             f"sagetrain trains with: {', '.join(SUPPORTED_METHODS)}")
        return data


class JobCreate(BaseModel):
    """POST /v1/fine_tuning/jobs. Unknown fields are rejected, naming the field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return refuse_nul(data)

    model: str = Field(min_length=1, max_length=200, description="A name from /v1/models")
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, min_length=1, max_length=64)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                               description="Part of the fine-tuned model's name")
    seed: int | None = Field(None, ge=0, le=2**31 - 1,
                             description="Random seed; default: one is chosen and stored")
    metadata: dict[str, str] | None = Field(None, description="Up to 16 string pairs")
    method: MethodRequest | None = Field(
        None, description="OpenAI's method: {\"type\": \"supervised\", \"supervised\": "
                          "{\"hyperparameters\": {...}}}, the hyperparameters as the top-level "
                          "field takes them (give one or the other)")
    task: TaskName | None = Field(
        None, description="sagetrain: the task to train (default: the training file's task, "
                          f"as its upload recognised it; {DEFAULT_TASK} for text rows)")
    sweep: SweepRequest | None = Field(
        None, description="sagetrain: a parent job with one child job per value "
                          "(needs validation_file; see GET .../{id}/sweep)")
    resources: Resources = Field(
        default_factory=Resources,
        description="sagetrain: {gpus, strategy}: train on several GPUs (processes on a "
                    "CPU-only deployment) with ddp or fsdp; default one GPU")
    compare_to: list[OptimizerName | CompareToRequest] | None = Field(
        None, min_length=1, max_length=3,
        description="sagetrain: other optimizers to run on the same data, seed and schedule, "
                    "each a name (its default grid) or {optimizer, learning_rate: [...]}")
    integrations: Integrations = Field(
        default_factory=list,
        description="Where to report the run, one entry per tool: {type: wandb, wandb: "
                    "{project, name, entity, tags}}, {type: mlflow, mlflow: {tracking_uri, "
                    "experiment}}, {type: tensorboard}")

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > _METADATA_MAX_PAIRS:
            raise ValueError(f"at most {_METADATA_MAX_PAIRS} pairs, got {len(value)}")
        for key, item in value.items():
            if len(key) > _METADATA_KEY_MAX:
                raise ValueError(f"key {key[:20]!r}... longer than {_METADATA_KEY_MAX} characters")
            if len(item) > _METADATA_VALUE_MAX:
                raise ValueError(f"value of {key!r} longer than {_METADATA_VALUE_MAX} characters")
        return value


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobWarning(BaseModel):
    code: str = Field(description="predicts_one_class, no_better_than_baseline or "
                                  "loss_diverged")
    message: str = Field(description="What was found, and what to change")


class Progress(BaseModel):
    step: int
    total_steps: int | None
    epoch: float


class SweepRun(BaseModel):
    job_id: str
    optimizer: str
    learning_rate: float
    seed: int | None = None


class SweepInfo(BaseModel):
    """On a sweep's parent job: its children (one per optimizer, learning rate and seed), the
    metric they are ranked by, and, once it has succeeded, the best child."""

    metric: str
    greater_is_better: bool
    runs: list[SweepRun]
    best_job_id: str | None = None


def _method(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """A job's `method` as OpenAI shows it: every sagetrain job is supervised."""
    shown = {k: hyperparameters.get(k)
             for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    return {"type": "supervised", "supervised": {"hyperparameters": shown}}


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
    status: str
    created_at: int
    finished_at: int | None
    estimated_finish: int | None
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any] = Field(
        description="OpenAI's shape: {type: supervised, supervised: {hyperparameters: "
                    "{n_epochs, batch_size, learning_rate_multiplier}}}, resolved; "
                    "`hyperparameters` has every value")
    fine_tuned_model: str | None
    result_files: list[str]
    trained_tokens: int | None
    seed: int
    metadata: dict[str, str] | None
    error: JobError | None
    warnings: list[JobWarning] = Field(
        [], description="What makes a succeeded job's model doubtful, each with what to "
                        "change; empty when none")
    organization_id: str
    integrations: list[Integration] = Field(
        [], description="As given at creation; a tool that fails is a warning event")
    # sagetrain's own
    suffix: str | None
    task: str
    progress: Progress
    queue_position: int | None
    parent_job_id: str | None = Field(None, description="The sweep this job is a child of")
    sweep: SweepInfo | None = Field(None, description="On a sweep's parent job only")
    resources: Resources = Field(default_factory=Resources,
                                 description="{gpus, strategy}: what the job trains on")

    @classmethod
    def from_row(cls, job: Job, queue_position: int | None = None) -> JobPublic:
        hyperparameters = job.spec.get("hyperparameters", {})
        return cls(
            id=job.id, model=job.model, status=job.status, created_at=ts(job.created_at) or 0,
            finished_at=ts(job.finished_at), estimated_finish=_estimated_finish(job),
            training_file=job.training_file_id, validation_file=job.validation_file_id,
            hyperparameters=hyperparameters, method=_method(hyperparameters),
            fine_tuned_model=job.fine_tuned_model, result_files=list(job.result_file_ids or []),
            trained_tokens=job.trained_tokens, seed=job.seed, metadata=job.user_metadata,
            error=JobError(**job.error) if job.error else None,
            warnings=[JobWarning(**w) for w in job.warnings or []],
            organization_id=job.owner_id,
            suffix=job.suffix, task=job.task,
            progress=Progress(step=job.step, total_steps=job.total_steps, epoch=job.epoch),
            queue_position=queue_position, parent_job_id=job.parent_id,
            sweep=SweepInfo.model_validate(job.sweep) if job.sweep else None,
            resources=Resources.model_validate(job.spec.get("resources") or {}),
            integrations=[Integration.model_validate(i)
                          for i in job.spec.get("integrations") or []],
        )


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: JobEvent) -> EventPublic:
        return cls(id=row.id, created_at=ts(row.created_at) or 0, level=row.level,
                   message=row.message, type=row.type, data=row.data)


class StreamToken(BaseModel):
    """A short-lived token to read one job's stream without the key: pass it as
    `GET .../{id}/stream?token=...` (EventSource cannot send an Authorization header)."""

    object: Literal["fine_tuning.job.stream_token"] = "fine_tuning.job.stream_token"
    fine_tuning_job_id: str
    token: str
    expires_at: int = Field(description="Unix seconds; after it the stream answers 401")


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]
    fine_tuned_model_checkpoint: str

    @classmethod
    def from_row(cls, row: Checkpoint) -> CheckpointPublic:
        return cls(id=row.id, created_at=ts(row.created_at) or 0, fine_tuning_job_id=row.job_id,
                   step_number=row.step, metrics={"step": row.step, **(row.metrics or {})},
                   fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint)


class MetricRow(BaseModel):
    """One logged row: step and epoch, then whatever the engine logged (train_loss,
    learning_rate, grad_norm, samples_per_second, or valid_loss, valid_* and the trivial
    baseline's baseline_*)."""

    model_config = ConfigDict(extra="allow")

    step: int
    epoch: float | None = None

    @classmethod
    def from_row(cls, row: JobMetric) -> MetricRow:
        return cls(**{**row.data, "step": row.step})


class SensitivityPublic(BaseModel):
    """The final model's sensitivity report, I = |theta * dL/dtheta| (SAGE.md): an
    "overall" entry, one per repeated block ("blocks") and one per module ("modules"), each
    with counts, mean, quantiles, a log10(I) histogram and fraction_below thresholds
    (sage_core/training/sensitivity.py), plus the examples it was measured on."""

    model_config = ConfigDict(extra="allow")

    object: Literal["fine_tuning.job.sensitivity"] = "fine_tuning.job.sensitivity"
    fine_tuning_job_id: str
    overall: dict[str, Any]
    blocks: dict[str, Any] = Field(default_factory=dict)
    modules: dict[str, Any] = Field(default_factory=dict)


class SweepChild(BaseModel):
    id: str
    optimizer: str
    learning_rate: float
    seed: int | None = None
    status: str
    fine_tuned_model: str | None
    warnings: list[str] = Field([], description="The codes of the child's own warnings")
    metrics: dict[str, Any] = Field(description="The child's last validation metrics")
    score: float | None = Field(description="metrics[metric], the value it is ranked by")


class SweepBest(BaseModel):
    """The best succeeded child of one optimizer (job_id null while none has succeeded),
    with a compact summary of its sensitivity report."""

    optimizer: str
    job_id: str | None
    learning_rate: float | None
    score: float | None
    metrics: dict[str, Any]
    fine_tuned_model: str | None
    sensitivity: dict[str, Any] | None = Field(
        description="overall and encoder blocks: mean I and fraction_below per threshold")


class SweepRate(BaseModel):
    """One (optimizer, learning rate) over its seeds: the last validation main metric's mean
    and sample standard deviation over the seeds that logged it."""

    optimizer: str
    learning_rate: float
    seeds: list[int | None] = Field(description="The seeds with a score, in grid order")
    n: int = Field(description="How many seeds have a score")
    mean: float | None
    std: float | None = Field(description="Sample standard deviation; null under two seeds")
    best: bool = Field(description="The optimizer's best learning rate by mean")


class SweepComparison(BaseModel):
    """The job's own optimizer against one compare_to optimizer, each at its best learning
    rate, paired by seed: difference = a - b in the metric's units, with a 95% t-interval
    (null with one pair)."""

    a: str
    b: str
    a_learning_rate: float | None
    b_learning_rate: float | None
    seeds: list[int | None] = Field(description="The seeds both sides have a score for")
    difference: float | None
    half_width: float | None
    low: float | None
    high: float | None
    verdict: str = Field(description="What the interval supports, in words: 'no difference "
                                     "shown', or '<a or b> ahead by X ± h'")


class SweepWarning(BaseModel):
    code: str = Field(description="best_at_grid_edge, validation_too_small or run_collapsed")
    message: str
    optimizer: str | None = None
    job_ids: list[str] = []
    suggested_grid: list[float] | None = Field(
        None, description="best_at_grid_edge: the learning rates to try next")


class SweepReport(BaseModel):
    object: Literal["fine_tuning.job.sweep"] = "fine_tuning.job.sweep"
    fine_tuning_job_id: str
    status: str
    metric: str
    greater_is_better: bool
    validation_rows: int | None = Field(None, description="Rows in the validation file")
    children: list[SweepChild]
    best_per_optimizer: list[SweepBest] = Field(
        description="Each optimizer's best single child (its model is the one to use)")
    best: SweepChild | None
    rates: list[SweepRate] = Field([], description="Every (optimizer, learning rate) over "
                                                   "its seeds, in grid order")
    comparisons: list[SweepComparison] = []
    warnings: list[SweepWarning] = []


# --- models ------------------------------------------------------------------------------

class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


# --- webhooks ----------------------------------------------------------------------------

WebhookEvent = Literal[
    "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return refuse_nul(data)

    url: str = Field(max_length=2048, description="http(s) URL that receives the POSTs")
    events: list[WebhookEvent] | None = Field(
        None, min_length=1, description="Event types to send; default: all three")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)


class WebhookDeliveryResult(BaseModel):
    """The newest delivery to an endpoint, as it stands: how its owner sees whether the
    endpoint works."""

    id: str
    event_type: str
    job_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None = Field(None, description="What went wrong on the last try")
    created_at: int
    delivered_at: int | None = None

    @classmethod
    def from_row(cls, row: WebhookDelivery) -> WebhookDeliveryResult:
        return cls(id=row.id, event_type=row.event_type, job_id=row.job_id,
                   status=row.status, attempts=row.attempts,  # type: ignore[arg-type]
                   last_error=row.last_error, created_at=ts(row.created_at) or 0,
                   delivered_at=ts(row.delivered_at))


class WebhookPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    created_at: int
    secret: str | None = Field(None, description="Signing secret; returned only on create")
    last_delivery: WebhookDeliveryResult | None = Field(
        None, description="The newest delivery to this endpoint and its result; null before "
                          "the first")

    @classmethod
    def from_row(cls, row: WebhookEndpoint, *, with_secret: bool = False,
                 last: WebhookDelivery | None = None) -> WebhookPublic:
        return cls(id=row.id, url=row.url, events=list(row.events),
                   created_at=ts(row.created_at) or 0,
                   secret=row.secret if with_secret else None,
                   last_delivery=WebhookDeliveryResult.from_row(last) if last else None)
