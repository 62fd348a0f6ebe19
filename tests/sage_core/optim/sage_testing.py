"""Shared helpers for the SAGE tests: a fixed set of tensors, gradients and a stepping loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sage_core.optim import SAGE

SHAPES: tuple[tuple[int, ...], ...] = ((7, 5), (5,), (3, 4, 2), (1,), (16, 9))


def make_params(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[Tensor]:
    """A few tensors of mixed rank; the first holds exact zeros that must never move, the
    last is non-contiguous (a transposed matrix)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    params[0][0, :3] = 0.0
    params.append(torch.randn(4, 6, generator=gen, dtype=torch.float64).to(dtype).t())
    return [p.requires_grad_() for p in params]


def make_grads(params: list[Tensor], step: int, seed: int = 1) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed * 10_000 + step)
    return [
        torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params
    ]


def run_steps(
    steps: int,
    *,
    dtype: torch.dtype = torch.float32,
    lr_schedule: list[float] | None = None,
    **options: Any,
) -> tuple[list[Tensor], SAGE]:
    """Fresh params, `steps` SAGE steps with deterministic gradients; options go to SAGE."""
    params = make_params(dtype)
    optimizer = SAGE(params, **options)
    for step in range(steps):
        if lr_schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_schedule[step]
        for p, g in zip(params, make_grads(params, step), strict=True):
            p.grad = g
        optimizer.step()
    return [p.detach() for p in params], optimizer
