"""The job spec: the one contract between the API and the worker.

`JobSpec` is what a user asks for (OpenAI's "auto" allowed); `JobSpec.resolve()` turns it
into a `ResolvedSpec` with every value concrete, which is stored with the job and handed to
the training engine. Pure pydantic: no torch, no database.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from sage_core.errors import InvalidSpecError
from sage_core.integration_specs import Integration, check_integrations
from sage_core.names import (
    AUTO_EPOCHS_MAX,
    AUTO_EPOCHS_MIN_STEPS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_BETA3,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_MAX_SEQ_LENGTH,
    DEFAULT_TASK,
    DEFAULT_VALIDATION_SPLIT,
    GENERATIVE_TASKS,
    LORA_LEARNING_RATE_FACTOR,
    MAX_GPUS_PER_JOB,
    VALIDATION_SPLIT_MIN_ROWS,
    OptimizerName,
    SageScope,
    Strategy,
    TaskName,
)

Auto = Literal["auto"]


class LoraSettings(BaseModel):
    """LoRA (Hu et al. 2021) through `peft`: the base model is frozen and low-rank adapters
    are trained beside the chosen linear layers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    r: int = Field(8, ge=2, le=1024, description="Rank of each adapter, even")
    alpha: float = Field(16, gt=0, le=4096,
                         description="Scaling numerator: an adapter's output is scaled by alpha/r")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="all-linear: every linear layer but the output head; or module names "
                    "such as [\"q_proj\", \"v_proj\"]")

    @model_validator(mode="after")
    def _check(self) -> LoraSettings:
        if self.r % 2:
            # both adapter factors start non-zero with B @ A = 0 (so SAGE's sensitivity of
            # each is non-zero from the first step), which takes an even rank
            raise ValueError(f"r must be even, got {self.r}")
        if isinstance(self.target_modules, list) and not (
                self.target_modules and all(self.target_modules)):
            raise ValueError("target_modules must be 'all-linear' or a non-empty list of names")
        return self


class Hyperparameters(BaseModel):
    """Hyperparameters as a user sends them. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # OpenAI's three, each a number or "auto".
    n_epochs: int | Auto = Field(
        "auto", description=f"Passes over the training file (auto: from its size, at least "
        f"{DEFAULT_EPOCHS}, more for a small file so that it gets {AUTO_EPOCHS_MIN_STEPS} "
        f"optimizer steps, at most {AUTO_EPOCHS_MAX})"
    )
    batch_size: int | Auto = Field(
        "auto", description="Examples per optimizer step (auto: "
        + ", ".join(f"{n} for {t}" for t, n in DEFAULT_BATCH_SIZE.items()) + ")"
    )
    learning_rate_multiplier: float | Auto = Field(
        "auto", description="Scales the optimizer's default learning rate (auto: 1)"
    )
    validation_split: float | Auto = Field(
        "auto", description="Fraction of the training file held out for validation when no "
        f"validation file is given (auto: {DEFAULT_VALIDATION_SPLIT:g} of a file of at least "
        f"{VALIDATION_SPLIT_MIN_ROWS} examples, else 0); stratified by label for "
        "classification")
    # sagetrain's own.
    optimizer: OptimizerName = Field(
        "sage", description="sage (AdamW-SAGE), adamax-sage, adamw, adamax"
    )
    learning_rate: float | None = Field(
        None, gt=0, le=1,
        description="Peak learning rate; overrides the multiplier and the optimizer's default ("
        + ", ".join(f"{name} {lr:g}" for name, lr in DEFAULT_LEARNING_RATE.items())
        + f"; {LORA_LEARNING_RATE_FACTOR:g}x that with LoRA)",
    )
    beta3: float = Field(
        DEFAULT_BETA3, gt=0, lt=1, description="SAGE's sensitivity EMA coefficient"
    )
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Fraction of steps of linear warmup")
    weight_decay: float = Field(
        0.01, ge=0, le=1, description="Decay for non-bias, non-norm weights"
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Global gradient-norm clipping before each step; null disables"
    )
    max_seq_length: int | None = Field(
        None, ge=8, le=32768, description="Tokens per example after truncation (default: "
        + ", ".join(f"{n} for {t}" for t, n in DEFAULT_MAX_SEQ_LENGTH.items()) + ")"
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-batches per step; must divide batch_size"
    )
    eval_every_steps: int | None = Field(None, ge=1, description="Also evaluate every N steps")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Also save a checkpoint every N steps (one is saved each epoch)"
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N evaluations without improvement"
    )
    sage_scope: SageScope = Field(
        "blocks",
        description="blocks: SAGE on the repeated blocks' linear layers; all: every tensor",
    )
    train_on_inputs: bool = Field(
        False, description="chat/completion: loss on every token, not only the assistant's "
                           "(the completion's)")
    lora: LoraSettings | None = Field(
        None, description="chat/completion: train LoRA adapters instead of every weight")
    gradient_checkpointing: bool | Auto = Field(
        "auto", description="Recompute activations in the backward pass to save memory "
                            "(auto: on for models over 1B parameters on a GPU)")
    architecture: Literal["auto", "encoder-decoder"] = Field(
        "auto", description="seq2seq: auto, the model's own sequence-to-sequence head; "
                            "encoder-decoder, a decoder warm-started from an encoder model "
                            "(BERT2BERT)")
    num_beams: int = Field(
        1, ge=1, le=16, description="seq2seq: beams when generating for evaluation (1: greedy)")
    augment: bool = Field(
        True, description="image-classification: random resized crops and flips of the "
                          "training images")

    @model_validator(mode="after")
    def _check(self) -> Hyperparameters:
        if isinstance(self.n_epochs, int) and not 1 <= self.n_epochs <= 100:
            raise ValueError(f"n_epochs must be between 1 and 100, got {self.n_epochs}")
        if isinstance(self.batch_size, int) and not 1 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size must be between 1 and 4096, got {self.batch_size}")
        m = self.learning_rate_multiplier
        if isinstance(m, float | int) and not 0 < m <= 100:
            raise ValueError(f"learning_rate_multiplier must be in (0, 100], got {m}")
        if self.learning_rate is not None and m != "auto":
            raise ValueError("give learning_rate or learning_rate_multiplier, not both")
        split = self.validation_split
        if isinstance(split, float | int) and not 0 <= split <= 0.5:
            raise ValueError(f"validation_split must be between 0 and 0.5, got {split}")
        return self

    def resolve(self, task: TaskName = DEFAULT_TASK, *, train_rows: int | None = None,
                has_validation: bool = False) -> ResolvedHyperparameters:
        """Every value concrete for a job of `task` (whose defaults some depend on), training
        on `train_rows` examples (n_epochs and validation_split "auto" depend on it; None,
        unknown: DEFAULT_EPOCHS and no split) with or without a validation file."""
        for name, tasks in TASK_SPECIFIC.items():
            value = getattr(self, name)
            if task not in tasks and value != type(self).model_fields[name].default:
                raise InvalidSpecError(f"{name} applies to {', '.join(tasks)}, not to {task}",
                                       param=f"hyperparameters.{name}")
        multiplier = 1.0 if self.learning_rate_multiplier == "auto" else float(
            self.learning_rate_multiplier
        )
        default_lr = DEFAULT_LEARNING_RATE[self.optimizer] * (
            LORA_LEARNING_RATE_FACTOR if self.lora is not None else 1.0)
        split = self._validation_split(train_rows, has_validation)
        batch_size = DEFAULT_BATCH_SIZE[task] if self.batch_size == "auto" else self.batch_size
        if self.n_epochs != "auto":
            n_epochs = self.n_epochs
        elif train_rows is None:
            n_epochs = DEFAULT_EPOCHS
        else:
            n_epochs = auto_epochs(train_rows - held_out_count(train_rows, split), batch_size)
        data = self.model_dump()
        data.update(
            n_epochs=n_epochs,
            batch_size=batch_size,
            validation_split=split,
            learning_rate_multiplier=multiplier,
            learning_rate=self.learning_rate or default_lr * multiplier,
            max_seq_length=self.max_seq_length or DEFAULT_MAX_SEQ_LENGTH[task],
        )
        return ResolvedHyperparameters.model_validate(data)

    def _validation_split(self, train_rows: int | None, has_validation: bool) -> float:
        if self.validation_split != "auto":
            if has_validation and self.validation_split > 0:
                raise InvalidSpecError(
                    "validation_split holds out training rows when there is no validation "
                    "file; give one or the other", param="hyperparameters.validation_split")
            return float(self.validation_split)
        if has_validation or train_rows is None or train_rows < VALIDATION_SPLIT_MIN_ROWS:
            return 0.0
        return DEFAULT_VALIDATION_SPLIT


def auto_epochs(train_rows: int, batch_size: int) -> int:
    """n_epochs "auto" for `train_rows` training examples (after any validation split):
    DEFAULT_EPOCHS, or more so that the run takes AUTO_EPOCHS_MIN_STEPS optimizer steps,
    at most AUTO_EPOCHS_MAX."""
    steps_per_epoch = max(1, math.ceil(train_rows / batch_size))
    wanted = math.ceil(AUTO_EPOCHS_MIN_STEPS / steps_per_epoch)
    return max(DEFAULT_EPOCHS, min(AUTO_EPOCHS_MAX, wanted))


def held_out_count(rows: int, split: float) -> int:
    """How many of `rows` examples a validation split holds out (the engine's stratified
    split holds out fewer only where a label has too few examples to keep one for
    training)."""
    return min(rows - 1, round(rows * split)) if split > 0 else 0


class ResolvedHyperparameters(BaseModel):
    """Every hyperparameter concrete: what a job actually trains with."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    optimizer: OptimizerName
    learning_rate: float
    beta3: float
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float | None
    max_seq_length: int
    gradient_accumulation_steps: int
    eval_every_steps: int | None
    checkpoint_every_steps: int | None
    early_stopping_patience: int | None
    sage_scope: SageScope
    train_on_inputs: bool = False
    lora: LoraSettings | None = None
    # "auto" stays until the engine knows the model's size and device
    gradient_checkpointing: bool | Auto = "auto"
    architecture: Literal["auto", "encoder-decoder"] = "auto"
    num_beams: int = 1
    augment: bool = True
    # fraction of the training file held out for validation (0: none); a default for specs
    # stored before it existed
    validation_split: float = Field(0.0, ge=0, le=0.5)


# Hyperparameters that mean something to some tasks only: another task refuses a value
# other than the default.
TASK_SPECIFIC: dict[str, tuple[TaskName, ...]] = {
    "lora": GENERATIVE_TASKS,
    "train_on_inputs": GENERATIVE_TASKS,
    "architecture": ("seq2seq",),
    "num_beams": ("seq2seq",),
    "augment": ("image-classification",),
}


class Resources(BaseModel):
    """What a job runs on: `gpus` ranks (one per GPU; processes with the gloo backend on a
    CPU-only deployment), trained with `strategy`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gpus: int = Field(1, ge=1, le=MAX_GPUS_PER_JOB,
                      description="GPUs for this job, one training process each (on a "
                                  "CPU-only deployment: processes)")
    strategy: Strategy = Field(
        "auto", description="ddp: a replica per GPU; fsdp: parameters, gradients and "
                            "optimizer state sharded across GPUs; auto: ddp when the model "
                            "and its optimizer state fit on one GPU, else fsdp")


def check_resources(resources: Resources, hyperparameters: ResolvedHyperparameters) -> None:
    """Refuse what `resources.gpus` processes cannot train, whatever the machine: each needs
    an example a step, and LoRA's few trainable weights are not worth sharding. The API
    answers 400 at creation; the engine checks again before it launches any process."""
    if resources.strategy == "fsdp" and hyperparameters.lora is not None:
        raise InvalidSpecError("lora trains too few weights to shard; use strategy ddp",
                               param="resources.strategy")
    if hyperparameters.batch_size < resources.gpus:
        raise InvalidSpecError(
            f"batch_size {hyperparameters.batch_size} is smaller than the {resources.gpus} "
            "GPUs (processes) asked for: each needs an example a step",
            param="resources.gpus")


Integrations = Annotated[list[Integration], AfterValidator(check_integrations)]


class JobSpec(BaseModel):
    """What to train: a base model name from the catalog, a task, a seed, hyperparameters;
    and where to report the run (`integrations`, which training itself never reads)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=200)
    task: TaskName = DEFAULT_TASK
    seed: int = Field(42, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    resources: Resources = Field(default_factory=Resources)
    integrations: Integrations = Field(default_factory=list)

    def resolve(self, *, train_rows: int | None = None,
                has_validation: bool = False) -> ResolvedSpec:
        """See `Hyperparameters.resolve`: pass the training file's size and whether a
        validation file is given, so that n_epochs and validation_split "auto" fit the data."""
        return ResolvedSpec(
            model=self.model, task=self.task, seed=self.seed,
            hyperparameters=self.hyperparameters.resolve(
                self.task, train_rows=train_rows, has_validation=has_validation),
            resources=self.resources, integrations=self.integrations,
        )


class ResolvedSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str
    task: TaskName
    seed: int
    hyperparameters: ResolvedHyperparameters
    # a default for specs stored before jobs could ask for several GPUs
    resources: Resources = Field(default_factory=Resources)
    # a default for specs stored before jobs had integrations
    integrations: Integrations = Field(default_factory=list)
