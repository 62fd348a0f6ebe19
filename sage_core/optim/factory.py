"""Optimizers by name, as the training loop asks for them (the job spec's `optimizer`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from sage_core.names import DEFAULT_BETA3, OPTIMIZERS, OptimizerName, SageScope
from sage_core.optim.groups import sage_param_groups
from sage_core.optim.sage import SAGE

__all__ = ["build_optimizer", "make_optimizer"]


def build_optimizer(
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    name: OptimizerName,
    *,
    lr: float,
    weight_decay: float = 0.0,
    beta3: float = DEFAULT_BETA3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    compiled: bool | None = None,
) -> Optimizer:
    """The optimizer called ``name`` over ``params`` (tensors or param groups).

    - ``"sage"``: AdamW-SAGE, ``SAGE(base="adamw")``; groups keep their own ``"use_sage"`` flag.
    - ``"adamax-sage"``: Adamax-SAGE, ``SAGE(base="adamax")``; likewise.
    - ``"adamw"``: plain ``torch.optim.AdamW``, fused where the params' device supports it,
      else foreach. It ignores ``beta3``, ``compiled`` and any ``"use_sage"`` key in a group.
    - ``"adamax"``: ``SAGE(base="adamax")`` with every group forced to ``"use_sage": False``,
      i.e. SAGE.md's Adamax formulas with mult = 1 (no Ibar state).

    ``weight_decay`` is the default for groups that do not set their own (those from
    `sage_param_groups` do). ``compiled`` is passed to SAGE (None: its automatic choice).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer name: {name!r} (expected one of {OPTIMIZERS})")
    groups: list[Any] = list(params)
    if name == "adamw":
        return _torch_adamw(groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    common: dict[str, Any] = dict(
        lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, compiled=compiled
    )
    if name == "sage":
        return SAGE(groups, base="adamw", **common)
    if name == "adamax-sage":
        return SAGE(groups, base="adamax", **common)
    plain = [{**g, "use_sage": False} if isinstance(g, dict) else g for g in groups]
    return SAGE(plain, base="adamax", use_sage=False, **common)


def _torch_adamw(
    groups: list[Any], *, lr: float, weight_decay: float, betas: tuple[float, float], eps: float
) -> Optimizer:
    tensors = [
        p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])
    ]
    device_types = {p.device.type for p in tensors}
    floating = all(p.is_floating_point() for p in tensors)
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    fused = (
        len(device_types) == 1
        and floating
        and next(iter(device_types)) in _get_fused_kernels_supported_devices()
    )
    if fused:
        return torch.optim.AdamW(
            groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True
        )
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True
    )


def make_optimizer(
    model: nn.Module,
    name: OptimizerName,
    *,
    lr: float,
    weight_decay: float = 0.01,
    beta3: float = DEFAULT_BETA3,
    scope: SageScope = "blocks",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    compiled: bool | None = None,
) -> Optimizer:
    """`sage_param_groups(model, weight_decay, scope)` then `build_optimizer(groups, name, ...)`:
    the whole optimizer for a model in one call. ``scope`` only matters for the SAGE names."""
    groups = sage_param_groups(model, weight_decay=weight_decay, scope=scope)
    return build_optimizer(
        groups, name, lr=lr, weight_decay=weight_decay, beta3=beta3, betas=betas, eps=eps,
        compiled=compiled,
    )
