"""The one interface of a run-tracking tool, and what it knows of the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sage_core.artifacts import ArtifactStore
from sage_core.integration_specs import Integration
from sage_core.settings import Settings


@dataclass(frozen=True)
class RunInfo:
    """The job being reported: its id, model and task, its sweep's parent job, the
    worker's settings, the job's local run folder (kept across the attempts on one
    machine, removed when the job ends) and the artifact store with the job's prefix in it
    (what a later attempt on another machine needs)."""

    job_id: str
    model: str
    task: str
    parent_job_id: str | None  # the sweep a child job belongs to
    settings: Settings
    work_dir: Path
    store: ArtifactStore
    artifact_prefix: str


class Tracker(Protocol):
    name: str  # the integration type, named in its warnings

    def start(self, integration: Integration, hyperparameters: dict[str, Any]) -> None:
        """Open the tool's run (or reopen the job's run from an earlier attempt) and record
        the hyperparameters. Raises if the tool cannot be reached or used."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One metrics row: train rows (train_loss, learning_rate, ...) and evaluation rows
        (valid_*, baseline_*) alike."""

    def finish(self, summary: dict[str, float], *, status: str) -> Path | None:
        """End the run; status is succeeded, failed or stopped (paused, cancelled, shut
        down). `summary`: the last evaluation and the sensitivity summary (empty unless
        succeeded). Returns a file to publish as a result file of the job, or None."""

    def close(self) -> None:
        """Let go of whatever `start` opened, after a failure; never raises on purpose."""
