"""Run tracking: a job's `integrations` (W&B, MLflow, TensorBoard), fed by the runner.

Every tool implements one interface, `Tracker`: `start(integration, hyperparameters)`
when the run starts, `log(step, metrics)` for each metrics row, `finish(summary, status)`
at the end (the last evaluation and the sensitivity report's summary on success). `finish`
may hand back a file to publish as a result file of the job (TensorBoard's archive).

`Trackers` runs them and keeps them from hurting the job: a tool whose library is missing,
whose server is unreachable or that raises is reported once through `warn` (a warning
event on the job) and gets no further calls; the training goes on. Each library is imported
inside its tracker's `start`, so the service runs without them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sage_core.integration_specs import Integration
from worker.tracking.base import RunInfo, Tracker

log = logging.getLogger("sagetrain.worker")

__all__ = ["RunInfo", "Tracker", "Trackers", "start_trackers", "summary_of"]

Warn = Callable[[str, dict[str, Any]], None]  # (message, data) -> a warning event


def _tracker_for(integration: Integration, run: RunInfo) -> Tracker:
    if integration.type == "wandb":
        from worker.tracking.wandb_tracker import WandbTracker

        return WandbTracker(run)
    if integration.type == "mlflow":
        from worker.tracking.mlflow_tracker import MlflowTracker

        return MlflowTracker(run)
    from worker.tracking.tensorboard_tracker import TensorboardTracker

    return TensorboardTracker(run)


class Trackers:
    """The job's started trackers; a failing one is reported and dropped."""

    def __init__(self, run: RunInfo, warn: Warn) -> None:
        self.run, self._warn = run, warn
        self._active: list[Tracker] = []

    def start(self, integrations: list[Integration], hyperparameters: dict[str, Any]) -> None:
        for integration in integrations:
            tracker = _tracker_for(integration, self.run)
            self._active.append(tracker)
            self._call(tracker, "start", tracker.start, integration, hyperparameters)

    def log(self, row: dict[str, Any]) -> None:
        if not self._active:
            return
        step = int(row.get("step", 0))
        metrics = numeric(row, leave_out=("step", "total_steps"))
        for tracker in list(self._active):
            self._call(tracker, "log", tracker.log, step, metrics)

    def finish(self, summary: dict[str, float], *, status: str) -> list[Path]:
        """End every tool's run; the files to publish as result files."""
        files: list[Path] = []
        for tracker in list(self._active):
            ok, published = self._call(tracker, "finish", tracker.finish, summary,
                                       status=status)
            if ok and published is not None:
                files.append(published)
        self._active.clear()
        return files

    def _call(self, tracker: Tracker, phase: str, method: Callable[..., Any],
              *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """(True, what `method` returned), or (False, None) once its failure is reported
        and the tracker dropped."""
        try:
            return True, method(*args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, Exception | SystemExit):  # KeyboardInterrupt goes on up
                raise
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            if isinstance(exc, ImportError):
                reason = (f"a package it needs is not installed on this worker "
                          f"({exc.name or reason}); install sagetrain[tracking]")
            message = (f"{tracker.name} integration stopped ({phase}): "
                       f"{type(exc).__name__}{': ' + reason if reason else ''}; "
                       "the job goes on without it")
            log.warning("[%s] %s", self.run.job_id, message, exc_info=True)
            if tracker in self._active:
                self._active.remove(tracker)
            try:
                tracker.close()
            except Exception:
                log.debug("[%s] closing %s failed", self.run.job_id, tracker.name,
                          exc_info=True)
            self._warn(message, {"code": "integration_failed", "integration": tracker.name,
                                 "phase": phase})
            return False, None


def start_trackers(integrations: list[Integration], run: RunInfo,
                   hyperparameters: dict[str, Any], warn: Warn) -> Trackers:
    trackers = Trackers(run, warn)
    trackers.start(integrations, hyperparameters)
    return trackers


def numeric(row: dict[str, Any], leave_out: tuple[str, ...] = ()) -> dict[str, float]:
    """The row's finite numbers (booleans and None left out)."""
    return {k: float(v) for k, v in row.items()
            if k not in leave_out and isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v)}


def summary_of(metrics: dict[str, Any], sensitivity: dict[str, Any] | None) -> dict[str, float]:
    """What a run ends with: the last evaluation's numbers, and the sensitivity report
    (sage_core/training/sensitivity.py) flattened: sensitivity/overall/<statistic>,
    sensitivity/overall/fraction_below/<threshold>, and per repeated block
    sensitivity/blocks/<name>/mean and .../fraction_below/<threshold>."""
    summary = numeric(metrics, leave_out=("step",))
    if not isinstance(sensitivity, dict):
        return summary

    def entry(prefix: str, values: Any, keys: tuple[str, ...] | None = None) -> None:
        if not isinstance(values, dict):
            return
        chosen = {k: v for k, v in values.items() if keys is None or k in keys}
        summary.update({f"{prefix}/{k}": v for k, v in numeric(chosen).items()})
        for threshold, fraction in numeric(values.get("fraction_below") or {}).items():
            summary[f"{prefix}/fraction_below/{threshold}"] = fraction

    entry("sensitivity/overall", sensitivity.get("overall"))
    for name, block in (sensitivity.get("blocks") or {}).items():
        entry(f"sensitivity/blocks/{name}", block, keys=("mean", "fraction_zero"))
    return summary
