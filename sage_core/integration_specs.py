"""A job's `integrations`, in OpenAI's shape: `{"type": "wandb", "wandb": {...}}`, each
naming one run-tracking tool that the worker reports the run to (worker/tracking/).

Pure pydantic, part of the job spec. Checked here: the shape, the lengths, one entry per
type, and that an MLflow tracking URI a user gives is http(s) (a `file:` or database URI
would write on the server's own disks). Where each tool's credentials and default
locations come from (the worker's environment, SAGETRAIN_MLFLOW_TRACKING_URI) is the
worker's business; the API checks only that an MLflow entry without a tracking_uri has the
operator's default to go to.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from sage_core.net_guard import check_http_url

IntegrationType = Literal["wandb", "mlflow", "tensorboard"]
INTEGRATION_TYPES: tuple[str, ...] = ("wandb", "mlflow", "tensorboard")
MAX_WANDB_TAGS = 50
MLFLOW_URI_SCHEMES = ("http", "https")


class WandbSettings(BaseModel):
    """Weights & Biases: the run goes to `entity/project` (entity: the API key's default),
    named `name` (default: the job id), with `tags` (the job id is always added)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    project: str = Field(min_length=1, max_length=128, pattern=r"^[^/\\#?%:]+$",
                         description="The W&B project")
    name: str | None = Field(None, min_length=1, max_length=128,
                             description="The run's display name (default: the job id)")
    entity: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[^/\\#?%:]+$",
                               description="Team or user (default: the API key's)")
    tags: list[str] = Field(default_factory=list, max_length=MAX_WANDB_TAGS,
                            description=f"At most {MAX_WANDB_TAGS}, each 1 to 64 characters")

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not 1 <= len(tag) <= 64:
                raise ValueError(f"each tag must have 1 to 64 characters, got {tag[:70]!r}")
        return tags


class MlflowSettings(BaseModel):
    """MLflow: the run goes to `experiment` (created if missing) on `tracking_uri`, an
    http(s) MLflow server; without one, the operator's SAGETRAIN_MLFLOW_TRACKING_URI."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tracking_uri: str | None = Field(
        None, max_length=2048,
        description="http(s)://host[:port][/path] of an MLflow tracking server (default: "
                    "the server's SAGETRAIN_MLFLOW_TRACKING_URI)")
    experiment: str | None = Field(None, min_length=1, max_length=256,
                                   description="Experiment name (default: sagetrain)")

    @field_validator("tracking_uri")
    @classmethod
    def _http_uri(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in MLFLOW_URI_SCHEMES or not rest.strip("/"):
            raise ValueError("must be an http:// or https:// URL of an MLflow tracking server "
                             "(leave it out for the server's default)")
        return check_http_url(value)


class TensorboardSettings(BaseModel):
    """TensorBoard: event files, published as a .tar.gz result file of the job."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Integration(BaseModel):
    """One entry of `integrations`: `type` and the object of that name (wandb needs one;
    mlflow's and tensorboard's may be left out). Shown back as given."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: IntegrationType
    # each None unless of its type, and then left out of the JSON
    wandb: WandbSettings | None = Field(None, exclude_if=lambda v: v is None)
    mlflow: MlflowSettings | None = Field(None, exclude_if=lambda v: v is None)
    tensorboard: TensorboardSettings | None = Field(None, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _settings_of_type(self) -> Integration:
        for other in INTEGRATION_TYPES:
            if other != self.type and getattr(self, other) is not None:
                raise ValueError(f"{other} does not belong in an integration of type "
                                 f"{self.type}")
        if self.type == "wandb" and self.wandb is None:
            raise ValueError("wandb is required for type wandb: {\"project\": ...}")
        if self.type == "mlflow" and self.mlflow is None:
            self.mlflow = MlflowSettings()
        if self.type == "tensorboard" and self.tensorboard is None:
            self.tensorboard = TensorboardSettings()
        return self


def check_integrations(integrations: list[Integration]) -> list[Integration]:
    """At most one integration of each type."""
    seen: set[str] = set()
    for index, integration in enumerate(integrations):
        if integration.type in seen:
            raise ValueError(f"type {integration.type} is given twice (again at "
                             f"integrations[{index}]); give each type once")
        seen.add(integration.type)
    return integrations
