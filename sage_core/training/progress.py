"""Where a run stands: its plan (steps per epoch, total, warmup, logging interval) and the
counters a resume restores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunPlan:
    """The run's length, fixed at setup from the data and the hyperparameters."""

    steps_per_epoch: int
    n_epochs: int
    warmup_steps: int
    log_every: int  # optimizer steps between train rows

    @classmethod
    def make(cls, steps_per_epoch: int, *, n_epochs: int, warmup_ratio: float,
             log_every: int | None = None) -> RunPlan:
        """Train rows every step for runs of under 200 steps, else every total // 100 steps,
        at most every 50, unless `log_every` says otherwise."""
        total = steps_per_epoch * n_epochs
        return cls(steps_per_epoch, n_epochs, math.ceil(warmup_ratio * total),
                   log_every or (1 if total < 200 else min(50, total // 100)))

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.n_epochs

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch

    def data_position(self, step: int) -> tuple[int, int]:
        """(epoch index, batch within that epoch) of the next batch after `step` steps."""
        return divmod(step, self.steps_per_epoch)

    def position(self, step: int) -> dict[str, Any]:
        """The fields every metrics row starts with."""
        return {"step": step, "total_steps": self.total_steps,
                "epoch": round(self.epoch(step), 4)}


@dataclass
class Progress:
    """The counters a resume restores, stored as JSON in each checkpoint."""

    step: int = 0
    trained_tokens: int = 0
    best_score: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    best_checkpoint_score: float | None = None
    best_checkpoint_step: int | None = None
    last_eval: dict[str, Any] = field(default_factory=dict)
    last_train: dict[str, Any] = field(default_factory=dict)
    # the train_loss of the run's first train row, and of the latest LOSS_ROWS after it, for
    # the loss_diverged warning (verdicts.py)
    first_train_loss: float | None = None
    last_train_losses: list[float] = field(default_factory=list)
