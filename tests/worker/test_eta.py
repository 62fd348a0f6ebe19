"""estimated_finish's arithmetic (worker/eta.py): pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.eta import Eta, evaluations_left, finish_at, seconds_left

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PLAN = {"total_steps": 100, "steps_per_epoch": 50, "batch_size": 10, "log_every": 10,
        "eval_every_steps": None, "evaluates": True, "validation_examples": 40,
        "sensitivity_batches": 8}


def test_evaluations_left_counts_epoch_ends_and_every_n_steps_once() -> None:
    assert evaluations_left(0, 100, 50, None) == 2
    assert evaluations_left(50, 100, 50, None) == 1
    assert evaluations_left(100, 100, 50, None) == 0
    assert evaluations_left(0, 100, 50, 20) == 6  # 20 40 50 60 80 100
    assert evaluations_left(45, 100, 50, 20) == 4  # 50 60 80 100


def test_seconds_left_includes_evaluations_and_the_report_and_is_never_negative() -> None:
    assert seconds_left(steps_left=10, seconds_per_step=0.5, evaluations=2,
                        seconds_per_evaluation=3.0, report_seconds=4.0) == 15.0
    assert seconds_left(steps_left=0, seconds_per_step=0.5, evaluations=0,
                        seconds_per_evaluation=3.0, report_seconds=4.0) == 4.0
    assert seconds_left(steps_left=0, seconds_per_step=0.5, evaluations=0,
                        seconds_per_evaluation=0.0, report_seconds=-1.0) == 0.0
    assert finish_at(NOW, -5.0) == NOW  # never earlier than now
    assert finish_at(NOW, 2.0) == NOW + timedelta(seconds=2)


def test_eta_rate_leaves_out_the_first_window_once_a_second_comes() -> None:
    eta = Eta()
    assert eta.seconds_left(0) is None  # no plan, no rate
    eta.on_plan(PLAN)
    assert eta.seconds_left(0) is None  # no train row yet: no estimate rather than a wrong one
    # the first window (10 steps of 10 examples) took 20 s: it compiled the kernels
    eta.on_row({"step": 10, "train_loss": 1.0, "samples_per_second": 5.0})
    assert eta.seconds_per_step() == 2.0
    # the next one took 1 s: the steady rate, 0.1 s a step
    eta.on_row({"step": 20, "train_loss": 1.0, "samples_per_second": 100.0})
    assert eta.seconds_per_step() == 0.1
    # 80 steps, 2 evaluations estimated at 40 examples / 100 per s, the report's 8 steps
    assert eta.seconds_left(20) == 80 * 0.1 + 2 * 0.4 + 8 * 0.1
    eta.on_row({"step": 50, "valid_loss": 0.5, "eval_seconds": 3.0})  # measured
    eta.on_row({"step": 50, "train_loss": 1.0, "samples_per_second": 100.0})
    assert abs(eta.seconds_left(50) - (50 * 0.1 + 1 * 3.0 + 8 * 0.1)) < 1e-9
    assert abs(eta.seconds_left(100) - 0.8) < 1e-9  # only the report is left


def test_eta_without_validation_has_no_evaluation_or_report() -> None:
    eta = Eta()
    eta.on_plan({**PLAN, "evaluates": False, "sensitivity_batches": 0})
    eta.on_row({"step": 10, "train_loss": 1.0, "samples_per_second": 50.0})
    assert eta.seconds_left(10) == 90 * 0.2
