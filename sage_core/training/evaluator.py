"""Evaluation on the validation file, and the tracking of its main metric: the best so far,
early stopping, and which checkpoint is the best one.

The main metric is the task's (`sage_core.names.main_metric`): valid_f1_macro for
classification, valid_loss for regression, chat and completion, valid_bleu for seq2seq.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sage_core.errors import TrainingError
from sage_core.names import main_metric
from sage_core.training import checkpoints as ckpt
from sage_core.training.device import Placement
from sage_core.training.progress import Progress
from sage_core.training.tasks import Encoded, Task


class Evaluator:
    """valid_loss plus the task's metrics on `items` (from the forward passes, then from
    the model's generations: `Task.generation_metrics`), each prefixed valid_."""

    def __init__(self, task: Task, items: list[Encoded], placement: Placement,
                 batch_size: int) -> None:
        self.task, self.items, self.placement, self.batch_size = (
            task, items, placement, batch_size)
        # the latest evaluation's `Task.predict` rows, in the items' order, and its step
        self.last_predictions: np.ndarray | None = None
        self.last_step: int | None = None

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        items, task = self.items, self.task
        # Length-sorted batches pad less; metrics do not depend on the order.
        order = sorted(range(len(items)), key=lambda i: task.example_length(items[i]))
        loss_sum = 0.0
        predictions: list[torch.Tensor] = []
        model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                batch = self.placement.batch(
                    task, [items[i] for i in order[start:start + self.batch_size]])
                with self.placement.autocast():
                    outputs = model(**batch.inputs)
                loss_sum += float(task.loss(outputs, batch.targets).sum())
                predictions.append(task.predict(outputs, batch.targets).cpu())
            rng = ckpt.capture_rng()
            try:
                generated = task.generation_metrics(model, items, self.placement,
                                                    self.batch_size)
            finally:
                ckpt.restore_rng(rng)
        finally:
            model.train()
        ordered = torch.cat(predictions).numpy()
        preds = np.empty_like(ordered)
        preds[np.asarray(order)] = ordered
        self.last_predictions, self.last_step = preds, step
        targets = [it.target for it in items]
        metrics = {"loss": loss_sum / len(items), **task.metrics(preds, targets), **generated}
        if not math.isfinite(metrics["loss"]):
            raise TrainingError(f"validation loss is {metrics['loss']} at step {step}",
                                code="nan_loss")
        return {f"valid_{k}": float(v) for k, v in metrics.items()}


class BestTracker:
    """The main metric across evaluations. Its counters live in `Progress`, so a resume
    carries them on; early stopping is due after `patience` evaluations without a new best
    (never at the last step, which ends the run anyway)."""

    def __init__(self, task_name: str, *, patience: int | None, total_steps: int) -> None:
        self.metric, self.greater_is_better = main_metric(task_name)
        self.patience, self.total_steps = patience, total_steps

    def better(self, a: float, b: float) -> bool:
        return a > b if self.greater_is_better else a < b

    def observe(self, progress: Progress, metrics: dict[str, float]) -> None:
        """Record an evaluation at progress.step."""
        p = progress
        p.last_eval = metrics
        score = metrics[self.metric]
        if p.best_score is None or self.better(score, p.best_score):
            p.best_score, p.best_step, p.evals_without_improvement = score, p.step, 0
        else:
            p.evals_without_improvement += 1

    def early_stop_due(self, progress: Progress) -> bool:
        return (self.patience is not None
                and progress.evals_without_improvement >= self.patience
                and progress.step < self.total_steps)

    def early_stop_message(self, progress: Progress) -> str:
        p = progress
        return (f"early stopping at step {p.step}: {self.metric} has not improved for "
                f"{p.evals_without_improvement} evaluations (best {p.best_score:.4g} at step "
                f"{p.best_step})")

    def checkpoint_taken(self, progress: Progress) -> None:
        """A checkpoint at progress.step after its evaluation: the best one if its score is."""
        p = progress
        score = p.last_eval[self.metric]
        if p.best_checkpoint_score is None or self.better(score, p.best_checkpoint_score):
            p.best_checkpoint_score, p.best_checkpoint_step = score, p.step
