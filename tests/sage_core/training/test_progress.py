"""The run plan: its length, logging interval and data positions."""

from __future__ import annotations

from sage_core.training.progress import RunPlan


def test_plan_length_warmup_and_positions() -> None:
    plan = RunPlan.make(16, n_epochs=3, warmup_ratio=0.1)
    assert plan.total_steps == 48 and plan.warmup_steps == 5  # ceil(4.8)
    assert plan.data_position(16) == (1, 0) and plan.data_position(21) == (1, 5)
    assert plan.position(24) == {"step": 24, "total_steps": 48, "epoch": 1.5}


def test_log_every_defaults_by_run_length() -> None:
    assert RunPlan.make(199, n_epochs=1, warmup_ratio=0).log_every == 1
    assert RunPlan.make(1000, n_epochs=1, warmup_ratio=0).log_every == 10
    assert RunPlan.make(100_000, n_epochs=1, warmup_ratio=0).log_every == 50
    assert RunPlan.make(100_000, n_epochs=1, warmup_ratio=0, log_every=7).log_every == 7
