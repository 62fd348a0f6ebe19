"""A run's optimizer and learning-rate schedule, from the job's hyperparameters.

The one place the engine calls `sage_core.optim.make_optimizer`.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from sage_core.names import SAGE_OPTIMIZERS
from sage_core.schemas import ResolvedHyperparameters
from sage_core.training.progress import RunPlan


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to the peak over `warmup_steps`, then linear decay towards 0. Step 0
    trains at peak/warmup rather than 0, so no step is wasted."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def build_optimizer(model: torch.nn.Module, hp: ResolvedHyperparameters, *,
                    compiled: bool | None = None) -> Optimizer:
    """`compiled` goes to SAGE (None: its automatic choice; False where the parameters are
    DTensors, FSDP's shards, which the compiled kernels cannot take)."""
    from sage_core.optim import make_optimizer

    return make_optimizer(model, hp.optimizer, lr=hp.learning_rate,
                          weight_decay=hp.weight_decay, beta3=hp.beta3, scope=hp.sage_scope,
                          compiled=compiled)


def sage_scope_warning(model: torch.nn.Module, hp: ResolvedHyperparameters) -> str | None:
    """Why the run's SAGE covers other parameters than its `sage_scope` asked for (a model
    without repeated blocks gets "all"), or None when it does not, or SAGE is not in use."""
    from sage_core.optim import find_sage_scope

    if hp.optimizer not in SAGE_OPTIMIZERS:
        return None
    return find_sage_scope(model, hp.sage_scope)[1]


def build_scheduler(optimizer: Optimizer, plan: RunPlan) -> LambdaLR:
    return LambdaLR(optimizer, lambda s: lr_factor(s, plan.total_steps, plan.warmup_steps))
