"""A running job's estimated_finish: the steps left at this attempt's training rate, plus
the evaluations still to come and the final sensitivity report.

`Eta` is fed by the runner (the engine's plan event, its metrics rows and phase events);
`seconds_left` and `evaluations_left` are the pure arithmetic, tested on their own.

- The rate is this attempt's only (a resumed job does not count its earlier attempts' steps)
  and leaves out setup and evaluation: it sums each train row's window, (steps since the
  previous train row) x batch_size / samples_per_second, the engine's TrainWindow having
  already left out the time in evaluations and checkpoints. The first train row (with the
  first step's one-off costs, such as compiling SAGE's kernels) is used only until a
  second one comes.
- An evaluation costs its measured time (the eval rows' eval_seconds, their mean); before
  the first one, validation examples / training samples per second (an evaluation runs
  forward passes only, so this over-estimates).
- The sensitivity report costs its batches x the time of one training step (a forward and
  backward pass, over-estimated by the optimizer's share), once it is known.
- The estimate is never earlier than now: a phase that runs long pushes it on at its next
  row or phase event.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any


def evaluations_left(step: int, total_steps: int, steps_per_epoch: int,
                     eval_every_steps: int | None) -> int:
    """The evaluations after `step` up to `total_steps`: one at each epoch end and every
    `eval_every_steps`, once per step."""
    def multiples(k: int) -> int:
        return total_steps // k - step // k

    if step >= total_steps:
        return 0
    count = multiples(steps_per_epoch)
    if eval_every_steps:
        both = math.lcm(steps_per_epoch, eval_every_steps)
        count += multiples(eval_every_steps) - multiples(both)
    return count


def seconds_left(*, steps_left: int, seconds_per_step: float, evaluations: int,
                 seconds_per_evaluation: float, report_seconds: float) -> float:
    """The time the run still needs; never negative."""
    return max(0.0, steps_left * seconds_per_step + evaluations * seconds_per_evaluation
               + report_seconds)


def finish_at(now: datetime, seconds: float) -> datetime:
    """now + seconds, never earlier than now."""
    return now + timedelta(seconds=max(0.0, seconds))


class Eta:
    """This attempt's measurements, and the estimate they give."""

    def __init__(self) -> None:
        self.plan: dict[str, Any] | None = None
        self._last_train_step: int | None = None
        self._first_window: tuple[int, float] | None = None  # (steps, seconds)
        self._steps = 0  # after the first window
        self._seconds = 0.0
        self._evaluations: list[float] = []
        self._samples_per_second: float | None = None

    def on_plan(self, plan: dict[str, Any]) -> None:
        self.plan = dict(plan)

    def on_row(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        if isinstance(row.get("eval_seconds"), int | float):
            self._evaluations.append(float(row["eval_seconds"]))
        sps = row.get("samples_per_second")
        if "train_loss" not in row or not isinstance(sps, int | float) or sps <= 0:
            return
        batch = (self.plan or {}).get("batch_size")
        previous = self._last_train_step
        self._last_train_step = step
        if previous is None:
            # The attempt's first row: its window started with the attempt's first step.
            previous = step - max(1, (self.plan or {}).get("log_every", 1))
        steps = step - previous
        if steps <= 0 or not batch:
            return
        self._samples_per_second = float(sps)
        window = (steps, steps * batch / sps)
        if self._first_window is None:
            self._first_window = window
        else:
            self._steps += window[0]
            self._seconds += window[1]

    def seconds_per_step(self) -> float | None:
        if self._steps:
            return self._seconds / self._steps
        if self._first_window is not None:
            return self._first_window[1] / self._first_window[0]
        return None

    def seconds_left(self, step: int) -> float | None:
        """None until a train row has measured the rate."""
        per_step = self.seconds_per_step()
        plan = self.plan
        if per_step is None or plan is None:
            return None
        total = int(plan["total_steps"])
        evaluations = 0
        per_evaluation = 0.0
        if plan.get("evaluates"):
            evaluations = evaluations_left(step, total, int(plan["steps_per_epoch"]),
                                           plan.get("eval_every_steps"))
            if self._evaluations:
                per_evaluation = sum(self._evaluations) / len(self._evaluations)
            elif self._samples_per_second:
                per_evaluation = plan.get("validation_examples", 0) / self._samples_per_second
        return seconds_left(steps_left=max(0, total - step), seconds_per_step=per_step,
                            evaluations=evaluations, seconds_per_evaluation=per_evaluation,
                            report_seconds=self.report_seconds() or 0.0)

    def report_seconds(self) -> float | None:
        per_step = self.seconds_per_step()
        if per_step is None or self.plan is None:
            return None
        return int(self.plan.get("sensitivity_batches", 0)) * per_step
