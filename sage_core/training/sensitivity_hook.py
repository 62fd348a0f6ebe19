"""The final model's sensitivity report (`sensitivity.py`), run once after final/ is saved
and written beside the model as sensitivity.json.

It runs after every checkpoint and final/ are written, so it changes nothing a resume or a
download reads; the RNG states are restored afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sage_core.training import checkpoints as ckpt
from sage_core.training.device import Placement
from sage_core.training.sensitivity import sensitivity_report
from sage_core.training.tasks import Batch, Encoded, Task

SENSITIVITY_FILE = "sensitivity.json"  # in final/, beside the model
# Validation micro-batches for the final sensitivity pass. 4, not 8: the report is to cost at
# most 5% of a job at the defaults; all-MiniLM-L6-v2 on 1,000 SMS spam rows (CPU, 2 cores)
# took 296 s of which the report (then 8 batches, a 1,000,000-element sample) 13.6 s.
SENSITIVITY_BATCHES = 4


class SensitivityHook:
    """The report on the first SENSITIVITY_BATCHES micro-batches of `items`."""

    def __init__(self, task: Task, items: list[Encoded], placement: Placement,
                 batch_size: int) -> None:
        self.task, self.items, self.placement, self.batch_size = (
            task, items, placement, batch_size)

    def batch_count(self) -> int:
        """The micro-batches the report measures."""
        return min(SENSITIVITY_BATCHES, -(-len(self.items) // self.batch_size))

    def _batches(self) -> Iterator[Batch]:
        for start in range(0, len(self.items), self.batch_size):
            yield self.placement.batch(self.task, self.items[start:start + self.batch_size])

    def _loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        with self.placement.autocast():
            outputs = model(**batch.inputs)
        return self.task.loss(outputs, batch.targets)

    def measure(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        """The report of `model` at `step`. Raises what the pass raises: the caller decides
        that a diagnostic never fails the run."""
        rng = ckpt.capture_rng()
        start = time.perf_counter()
        try:
            report = sensitivity_report(model, self._batches(), self._loss,
                                        max_batches=SENSITIVITY_BATCHES)
        finally:
            ckpt.restore_rng(rng)
        report["step"] = step
        report["seconds"] = round(time.perf_counter() - start, 3)
        return report

    @staticmethod
    def write(report: dict[str, Any], final_dir: Path) -> None:
        (final_dir / SENSITIVITY_FILE).write_text(json.dumps(report, indent=1))
