"""Warnings about a finished run's model: results that look fine by status but are not.

A run that trained without error still ends `succeeded`; these rules name what makes its
model doubtful, each with what to change. Pure functions of numbers the loop already has
(tested on constructed values); the loop collects them at its end (`run_verdicts`) into
TrainResult.warnings and one "warning" event each, data {"code": ...}.

- predicts_one_class: a classifier's final validation predictions are one class for at
  least ONE_CLASS_SHARE (95%) of the rows while the validation labels hold more than one
  class.
- no_better_than_baseline: the best validation main metric of the run never beat the
  task's trivial baseline (`Task.baselines`: the majority class, the mean predictor,
  copying the source) on the same validation file. Equal is not better: a model that
  predicts the majority class scores exactly the baseline.
- loss_diverged: the mean train_loss of the last LOSS_ROWS (5) logged train rows is above
  DIVERGENCE_FACTOR (1.5) times the first row's. The first row is the model before it
  learnt much (a classifier's near ln(classes) whatever its batch); the last ones are
  averaged because a run of under 200 steps logs every step and one step's loss depends
  on its batch. Judged from 1 + LOSS_ROWS rows on (no overlap). A blow-up in the first
  steps that never recovers is caught too, which comparing two windows of means would
  miss. The validation loss is not used: it rises with overfitting (a
  classifier growing over-confident while its accuracy still improves), which is not
  divergence, and early stopping and the "best" checkpoint already answer it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ONE_CLASS_SHARE = 0.95
DIVERGENCE_FACTOR = 1.5
LOSS_ROWS = 5
# a main metric must beat its baseline by more than rounding to count as better
TOLERANCE = 1e-9

# {code, message}: a job's `warnings` entry
Verdict = dict[str, str]


def predicts_one_class(predicted: Sequence[int] | np.ndarray, targets: Sequence[int],
                       label_names: Sequence[str] | None = None) -> Verdict | None:
    """`predicted`: the final model's class id for each validation row; `targets`: the rows'
    labels."""
    pred, true = np.asarray(predicted), np.asarray(targets)
    if pred.size == 0 or len(np.unique(true)) < 2:
        return None
    classes, counts = np.unique(pred, return_counts=True)
    top = int(np.argmax(counts))
    share = counts[top] / pred.size
    if share < ONE_CLASS_SHARE:
        return None
    cls = int(classes[top])
    name = label_names[cls] if label_names is not None and 0 <= cls < len(label_names) else cls
    return {"code": "predicts_one_class",
            "message": (
                f"the final model predicts class {name!r} for {share:.0%} of the "
                f"{pred.size} validation rows, which hold {len(np.unique(true))} classes: it "
                "has not learnt to tell them apart. Train for more epochs or with a higher "
                "learning rate, add examples of the rarer classes or balance them, and "
                "check that the texts carry the label")}


def no_better_than_baseline(metric: str, greater_is_better: bool, best: float | None,
                            baseline: float | None) -> Verdict | None:
    """`metric`: the main metric's logged name (valid_f1_macro); `best`: its best value over
    the run's evaluations; `baseline`: the trivial baseline's value of it (None: the task has
    none, nothing to compare)."""
    if best is None or baseline is None:
        return None
    beat = (best > baseline + TOLERANCE) if greater_is_better else (best < baseline - TOLERANCE)
    if beat:
        return None
    return {"code": "no_better_than_baseline",
            "message": (
                f"the best {metric} of the run, {best:.4g}, never beat the trivial baseline's "
                f"{baseline:.4g} (baseline_{metric.removeprefix('valid_')}): the model is no "
                "better than a rule that ignores the input. Train for more epochs, try "
                "another learning rate (higher if the loss barely moved, lower if it rose), "
                "or add training data")}


def loss_diverged(first_loss: float | None,
                  last_losses: Sequence[float]) -> Verdict | None:
    """`first_loss`: the first train row's train_loss; `last_losses`: the latest rows' after
    it (None, or fewer than LOSS_ROWS: too short a run to judge)."""
    if first_loss is None or first_loss <= 0 or len(last_losses) < LOSS_ROWS:
        return None
    last = float(np.mean(last_losses[-LOSS_ROWS:]))
    if last <= DIVERGENCE_FACTOR * first_loss:
        return None
    return {"code": "loss_diverged",
            "message": (
                f"the train loss rose from {first_loss:.4g} (the first logged row) to "
                f"{last:.4g} (mean of the last {LOSS_ROWS}), more than {DIVERGENCE_FACTOR}x: "
                "training diverged. Lower the learning rate (learning_rate_multiplier), "
                "keep warmup and gradient clipping on, or use a larger batch size")}


def run_verdicts(*, metric: str, greater_is_better: bool, best: float | None,
                 baselines: dict[str, Any], first_train_loss: float | None,
                 last_train_losses: Sequence[float],
                 predicted: Sequence[int] | np.ndarray | None = None,
                 targets: Sequence[int] | None = None,
                 label_names: Sequence[str] | None = None) -> list[Verdict]:
    """Every rule's warning, in a fixed order. `baselines` holds baseline_<metric> keys (a
    metrics row's); `predicted`/`targets` only for classification (else None)."""
    baseline = baselines.get("baseline_" + metric.removeprefix("valid_"))
    found = [
        predicts_one_class(predicted, targets, label_names)
        if predicted is not None and targets is not None else None,
        no_better_than_baseline(metric, greater_is_better, best, baseline),
        loss_diverged(first_train_loss, last_train_losses),
    ]
    return [w for w in found if w is not None]
