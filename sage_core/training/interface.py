"""The engine's public types. Torch-free, so callers can build them without loading torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _ignore_metrics(row: dict[str, Any]) -> None:
    return None


def _ignore_checkpoint(folder: Path, step: int, metrics: dict[str, Any]) -> None:
    return None


def _never_stop() -> bool:
    return False


def _ignore_event(level: str, message: str, data: dict[str, Any] | None) -> None:
    return None


@dataclass
class Callbacks:
    """How a run reports to its caller. All are called from the training thread.

    on_metrics(row): every logged row, train rows and evaluation rows alike.
    on_checkpoint(hf_folder, step, metrics): after a checkpoint is fully written. The folder
        may be deleted by a later checkpoint's pruning, so copy it inside the callback.
    should_stop(): polled after every optimizer step; True saves a resume checkpoint and
        returns a TrainResult with status "stopped".
    on_event(level, message, data): "info" | "warning" | "error" lines for humans; `data`, a
        JSON-able dict where the line has structured content (a sample answer: step, prompt,
        reference, answer), else None.
    """

    on_metrics: Callable[[dict[str, Any]], None] = _ignore_metrics
    on_checkpoint: Callable[[Path, int, dict[str, Any]], None] = _ignore_checkpoint
    should_stop: Callable[[], bool] = _never_stop
    on_event: Callable[[str, str, dict[str, Any] | None], None] = _ignore_event


@dataclass
class TrainResult:
    status: str  # "completed" | "stopped" | "early_stopped"
    step: int
    total_steps: int
    epoch: float
    final_dir: Path | None  # HF folder of the final model; None when stopped
    metrics: dict[str, Any] = field(default_factory=dict)  # last evaluation (valid_*, baseline_*)
    trained_tokens: int = 0  # non-padding tokens seen in training
    # The final model's sensitivity report (training/sensitivity.py), also written to
    # final/sensitivity.json; None without a validation file or when stopped.
    sensitivity: dict[str, Any] | None = None
    # What makes the model doubtful (sage_core/training/verdicts.py): [{code, message}],
    # each also a "warning" event; empty when none, and at a stop.
    warnings: list[dict[str, str]] = field(default_factory=list)
