"""Where metrics rows go, and how train rows are made from the steps between them.

`MetricLogger` appends each row to metrics.jsonl and hands it to `on_metrics`.
`TrainWindow` keeps the step losses and gradient norms since the last train row on the
device (reading them forces a sync) and turns them into one row of means, with the task's
train statistic where it has one (`Task.train_statistic`: a ratio of sums over the row's
steps, such as train_mean_token_accuracy).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from sage_core.errors import TrainingError


class MetricLogger:
    """metrics.jsonl, one JSON row per line, kept in step with the run's checkpoints; with
    `path` None (a distributed run's other ranks), rows go to `on_metrics` alone."""

    def __init__(self, path: Path | None, on_metrics: Callable[[dict[str, Any]], None], *,
                 resumed_step: int = 0) -> None:
        self._on_metrics = on_metrics
        self._fh: IO[str] | None = None
        if path is None:
            return
        kept: list[str] = []
        if path.exists():
            # Rows after the checkpoint came from steps that will run again.
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resumed_step]
        self._fh = open(path, "w")  # noqa: SIM115 - closed in close()
        for line in kept:
            self._fh.write(line + "\n")
        self._fh.flush()

    def log(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()
        self._on_metrics(dict(row))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class _Step:
    loss: torch.Tensor  # the step's mean loss, on the device
    grad_norm: torch.Tensor
    learning_rate: float
    examples: int
    statistic: tuple[torch.Tensor, torch.Tensor] | None = None  # (numerator, denominator)


class TrainWindow:
    """The optimizer steps since the last train row. `train_loss` and `grad_norm` of a row
    are means over them, `learning_rate` that of the last, and samples_per_second leaves
    out the time spent inside `paused()` (evaluation, checkpoints)."""

    def __init__(self, learning_rate: float, statistic_name: str | None = None) -> None:
        self._learning_rate = learning_rate  # the spec's, named in the non-finite message
        self._statistic_name = statistic_name
        self._steps: list[_Step] = []
        self._start = time.perf_counter()
        self._paused = 0.0

    def restart_clock(self) -> None:
        self._start, self._paused = time.perf_counter(), 0.0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, learning_rate: float,
            examples: int,
            statistic: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self._steps.append(_Step(loss, grad_norm, learning_rate, examples, statistic))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - start

    def check(self, step: int) -> list[tuple[float, float]]:
        """Read the pending (loss, grad norm) pairs, `step` being the last one's (a device
        sync); a non-finite loss fails the run, naming its step."""
        if not self._steps:
            return []
        losses = torch.stack([s.loss for s in self._steps]).tolist()
        norms = torch.stack([s.grad_norm.float() for s in self._steps]).tolist()
        first_step = step - len(self._steps) + 1
        for offset, value in enumerate(losses):
            if not math.isfinite(value):
                raise TrainingError(
                    f"training loss is {value} at step {first_step + offset}; try a lower "
                    f"learning_rate (now {self._learning_rate:g}) or max_grad_norm",
                    code="nan_loss")
        return list(zip(losses, norms, strict=True))

    def flush(self, step: int) -> dict[str, Any] | None:
        """The row's means over the pending steps (None if there are none), which it
        forgets; the caller restarts the clock once the row is logged."""
        values = self.check(step)
        if not values:
            return None
        elapsed = max(time.perf_counter() - self._start - self._paused, 1e-9)
        # With loss scaling a skipped step has an infinite norm; leave those out of the mean.
        norms = [n for _, n in values if math.isfinite(n)]
        row = {
            "train_loss": sum(loss for loss, _ in values) / len(values),
            "learning_rate": self._steps[-1].learning_rate,
            "grad_norm": sum(norms) / len(norms) if norms else None,
            "samples_per_second": sum(s.examples for s in self._steps) / elapsed,
        }
        if self._statistic_name is not None:
            row[f"train_{self._statistic_name}"] = self._statistic()
        self._steps.clear()
        return row

    def _statistic(self) -> float | None:
        pairs = [s.statistic for s in self._steps if s.statistic is not None]
        if not pairs:
            return None
        numerator, denominator = torch.stack([torch.stack(p).float() for p in pairs]).sum(0)
        return float(numerator / denominator) if denominator > 0 else 0.0
