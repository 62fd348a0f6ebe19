"""metrics.jsonl and the train rows' means over the steps between them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sage_core.errors import TrainingError
from sage_core.training.metric_logger import MetricLogger, TrainWindow


def _step(window: TrainWindow, loss: float, norm: float, lr: float = 0.1) -> None:
    window.add(torch.tensor(loss), torch.tensor(norm), lr, 8)


def test_a_row_holds_means_over_its_steps() -> None:
    window = TrainWindow(learning_rate=0.1)
    assert window.flush(0) is None
    _step(window, 1.0, 2.0, lr=0.1)
    _step(window, 3.0, float("inf"), lr=0.2)  # a step skipped by loss scaling
    row = window.flush(2)
    assert row is not None
    assert row["train_loss"] == 2.0 and row["grad_norm"] == 2.0
    assert row["learning_rate"] == 0.2 and row["samples_per_second"] > 0
    assert window.flush(2) is None  # forgotten once read


def test_paused_time_is_left_out_of_samples_per_second() -> None:
    window = TrainWindow(learning_rate=0.1)
    with window.paused():
        time.sleep(0.2)
    _step(window, 1.0, 1.0)
    row = window.flush(1)
    assert row is not None and row["samples_per_second"] > 8 / 0.2


def test_a_non_finite_loss_names_its_step() -> None:
    window = TrainWindow(learning_rate=3e-3)
    for loss in (1.0, float("nan"), 1.0):
        _step(window, loss, 1.0)
    with pytest.raises(TrainingError, match="loss is nan at step 5; .*now 0.003") as info:
        window.check(6)
    assert info.value.code == "nan_loss"


def test_a_resumed_log_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))
    seen: list[dict[str, Any]] = []
    logger = MetricLogger(path, seen.append, resumed_step=2)
    logger.log({"step": 3, "train_loss": 0.5})
    logger.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"step": 1}, {"step": 2}, {"step": 3, "train_loss": 0.5}]
    assert seen == [{"step": 3, "train_loss": 0.5}]


def test_a_task_statistic_is_a_ratio_of_sums_over_the_rows_steps() -> None:
    window = TrainWindow(learning_rate=0.1, statistic_name="mean_token_accuracy")
    window.add(torch.tensor(1.0), torch.tensor(1.0), 0.1, 8, (torch.tensor(1), torch.tensor(2)))
    window.add(torch.tensor(1.0), torch.tensor(1.0), 0.1, 8, (torch.tensor(5), torch.tensor(6)))
    row = window.flush(2)
    # (1 + 5) / (2 + 6), not the mean of 1/2 and 5/6: every token weighs the same
    assert row is not None and row["train_mean_token_accuracy"] == 0.75
    plain = TrainWindow(learning_rate=0.1)
    _step(plain, 1.0, 1.0)
    assert set(plain.flush(1) or {}) == {"train_loss", "learning_rate", "grad_norm",
                                         "samples_per_second"}
