"""The learning-rate schedule and the optimizer a run builds from its hyperparameters."""

from __future__ import annotations

import pytest
import torch
from training_data import make_spec

from sage_core.optim.groups import NO_BLOCKS_REASON
from sage_core.training.optimization import (
    build_optimizer,
    build_scheduler,
    lr_factor,
    sage_scope_warning,
)
from sage_core.training.progress import RunPlan


def test_learning_rate_schedule() -> None:
    factors = [lr_factor(s, total_steps=10, warmup_steps=2) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[-1] == pytest.approx(1 / 8) and factors == sorted(factors[:2]) + sorted(
        factors[2:], reverse=True)
    assert lr_factor(0, total_steps=4, warmup_steps=0) == 1.0


def test_scheduler_follows_the_plan() -> None:
    model = torch.nn.Linear(3, 2)
    hp = make_spec(optimizer="adamw", learning_rate=1e-2).hyperparameters
    optimizer = build_optimizer(model, hp)
    plan = RunPlan.make(5, n_epochs=2, warmup_ratio=0.2)  # 10 steps, 2 of warmup
    scheduler = build_scheduler(optimizer, plan)
    rates = []
    for _ in range(plan.total_steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1e-2 * lr_factor(s, 10, 2) for s in range(10)])


def test_sage_scope_warning_names_the_fallback_to_all() -> None:
    flat = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    blocks = torch.nn.ModuleList([torch.nn.Linear(3, 3)])
    for optimizer in ("sage", "adamax-sage"):
        hp = make_spec(optimizer=optimizer).hyperparameters
        assert hp.sage_scope == "blocks"
        assert sage_scope_warning(flat, hp) == NO_BLOCKS_REASON
        assert sage_scope_warning(blocks, hp) is None
        assert sage_scope_warning(flat, make_spec(optimizer=optimizer, sage_scope="all")
                                  .hyperparameters) is None
    for optimizer in ("adamw", "adamax"):  # no SAGE: the scope means nothing
        assert sage_scope_warning(flat, make_spec(optimizer=optimizer).hyperparameters) is None
