"""Warnings about a finished run's model (verdicts.py) on constructed numbers, the tasks'
trivial baselines on constructed examples, and a degenerate tiny-BERT run that gets both
predicts_one_class and no_better_than_baseline."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_data import make_spec, spam_rows, write_jsonl

from sage_core.training import Callbacks, run_training
from sage_core.training.image_classification import ImageClassification
from sage_core.training.tasks import Encoded, TextClassification, TextRegression
from sage_core.training.verdicts import (
    loss_diverged,
    no_better_than_baseline,
    predicts_one_class,
    run_verdicts,
)


# --------------------------------------------------------------------------- predicts_one_class
def test_one_class_for_all_rows_of_two_classes_warns_naming_the_class() -> None:
    warning = predicts_one_class([0] * 20, [0] * 15 + [1] * 5, ["ham", "spam"])
    assert warning is not None and warning["code"] == "predicts_one_class"
    assert "'ham' for 100% of the 20 validation rows" in warning["message"]
    assert "more epochs" in warning["message"]


def test_one_class_for_95_percent_warns_and_for_90_does_not() -> None:
    targets = [0, 1] * 10
    assert predicts_one_class([1] * 19 + [0], targets) is not None  # 95%
    assert predicts_one_class([1] * 18 + [0, 0], targets) is None  # 90%


def test_one_class_is_no_warning_when_the_labels_hold_one_class_or_no_rows() -> None:
    assert predicts_one_class([2] * 10, [2] * 10) is None
    assert predicts_one_class([], []) is None


# --------------------------------------------------------------------------- baseline
def test_equal_to_the_baseline_is_not_better() -> None:
    # the 240-row spam job: macro F1 0.43, the majority class's 0.43
    warning = no_better_than_baseline("valid_f1_macro", True, 0.4286, 0.4286)
    assert warning is not None and warning["code"] == "no_better_than_baseline"
    assert "baseline_f1_macro" in warning["message"]
    assert no_better_than_baseline("valid_f1_macro", True, 0.40, 0.4286) is not None
    assert no_better_than_baseline("valid_f1_macro", True, 0.91, 0.4286) is None


def test_a_loss_baseline_is_beaten_by_a_lower_loss() -> None:
    assert no_better_than_baseline("valid_loss", False, 0.8, 1.9) is None
    assert no_better_than_baseline("valid_loss", False, 2.1, 1.9) is not None


def test_no_baseline_or_no_evaluation_is_no_warning() -> None:
    assert no_better_than_baseline("valid_loss", False, 0.8, None) is None
    assert no_better_than_baseline("valid_f1_macro", True, None, 0.4) is None


# --------------------------------------------------------------------------- divergence
def test_mean_of_the_last_rows_above_one_and_a_half_times_the_first_diverged() -> None:
    warning = loss_diverged(0.7, [1.0, 1.2, 1.1, 1.1, 1.1])  # mean 1.1: 1.57x
    assert warning is not None and warning["code"] == "loss_diverged"
    assert "from 0.7 (the first logged row) to 1.1 (mean of the last 5)" in warning["message"]
    assert "Lower the learning rate" in warning["message"]
    assert loss_diverged(0.7, [1.0, 1.0, 1.0, 1.0, 1.0]) is None  # 1.43x
    assert loss_diverged(0.7, [0.1] * 5) is None


def test_a_blow_up_in_the_first_steps_that_never_recovers_diverged() -> None:
    # adamw at learning rate 0.5 on the tiny BERT: these rows, one per step
    losses = [0.686, 4.938, 8.279, 4.012, 6.174, 7.482, 1.61, 6.474, 4.523, 1.669, 2.795,
              3.411]
    assert loss_diverged(losses[0], losses[-5:]) is not None


def test_one_noisy_last_step_is_not_divergence() -> None:
    assert loss_diverged(0.5, [0.5, 0.5, 0.5, 0.5, 1.5]) is None  # mean 0.7: 1.4x


def test_too_few_rows_to_judge_divergence() -> None:
    assert loss_diverged(0.5, [9.0] * 4) is None
    assert loss_diverged(None, [9.0] * 5) is None
    assert loss_diverged(0.0, [1.0] * 5) is None


def test_run_verdicts_collects_in_order_and_reads_the_main_metrics_baseline() -> None:
    found = run_verdicts(metric="valid_f1_macro", greater_is_better=True, best=0.43,
                         baselines={"baseline_f1_macro": 0.43, "baseline_accuracy": 0.75},
                         first_train_loss=0.6, last_train_losses=[5.0] * 5,
                         predicted=[0] * 8, targets=[0] * 6 + [1] * 2)
    assert [w["code"] for w in found] == ["predicts_one_class", "no_better_than_baseline",
                                          "loss_diverged"]
    assert run_verdicts(metric="valid_loss", greater_is_better=False, best=0.3, baselines={},
                        first_train_loss=2.0,
                        last_train_losses=[0.4] * 5) == []


# --------------------------------------------------------------------------- baselines
def _items(targets: list) -> list[Encoded]:
    return [Encoded({}, t) for t in targets]


def test_classification_baseline_is_the_training_majority_for_every_row() -> None:
    task = TextClassification()
    # training majority: class 1; validation: 3 of 4 rows are class 1
    out = task.baselines(_items([1, 1, 0]), _items([1, 1, 1, 0]))
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["f1_macro"] == pytest.approx((6 / 7 + 0) / 2)  # F1 of class 1 is 2*3/(2*3+1)
    assert out["mcc"] == 0.0
    assert task.baselines(_items([1]), []) == {}


def test_image_classification_baseline_has_its_main_metric() -> None:
    out = ImageClassification().baselines(_items([2, 2, 0]), _items([0, 2]))
    assert out == {"accuracy": 0.5, "f1_macro": pytest.approx((0 + 2 / 3) / 2)}


def test_regression_baseline_is_the_mean_predictors_squared_error() -> None:
    out = TextRegression().baselines(_items([1.0, 3.0]), _items([0.0, 4.0]))
    assert out == {"loss": pytest.approx(((0 - 2) ** 2 + (4 - 2) ** 2) / 2)}


# --------------------------------------------------------------------------- end to end
def test_a_one_step_run_on_imbalanced_data_is_named_degenerate(
        train_models_dir: Path, tmp_path: Path) -> None:
    """3:1 ham to spam, one step at a tiny learning rate: the fresh head's bias decides,
    every row gets one class, and the result and events say so."""
    rows = [r for r in spam_rows(64) if r["label"] == "ham"][:24]
    rows += [r for r in spam_rows(64, seed=1) if r["label"] == "spam"][:8]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    valid_file = write_jsonl(tmp_path / "valid.jsonl", rows[::2])
    events: list[tuple[str, str, dict | None]] = []
    spec = make_spec(n_epochs=1, batch_size=32, learning_rate=1e-9, warmup_ratio=0.0)
    result = run_training(spec, train_file, tmp_path / "out", validation_file=valid_file,
                          models_dir=train_models_dir, device="cpu",
                          callbacks=Callbacks(on_event=lambda *e: events.append(e)))
    assert result.status == "completed" and result.step == 1
    codes = [w["code"] for w in result.warnings]
    assert codes == ["predicts_one_class", "no_better_than_baseline"]
    assert result.metrics["baseline_accuracy"] == 0.75  # 'ham' for 12 ham and 4 spam rows
    assert result.metrics["baseline_f1_macro"] == pytest.approx((6 / 7) / 2)
    warned = [(message, data) for level, message, data in events if level == "warning"]
    assert [(w["message"], {"code": w["code"]}) for w in result.warnings] == warned


def test_a_run_at_a_huge_learning_rate_is_named_diverged(
        train_models_dir: Path, tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", spam_rows(96))
    spec = make_spec(n_epochs=1, optimizer="adamw", learning_rate=0.5, warmup_ratio=0.0)
    result = run_training(spec, train_file, tmp_path / "out", models_dir=train_models_dir,
                          device="cpu")
    assert result.status == "completed" and result.step == 12
    assert [w["code"] for w in result.warnings] == ["loss_diverged"]
