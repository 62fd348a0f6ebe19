"""The SAGE optimizer (AdamW-SAGE and Adamax-SAGE), as specified in SAGE.md.

Laid out like torch/optim/adamw.py: the `SAGE` class keeps state and hyperparameters,
`sage()` dispatches to one of several interchangeable implementations that share one
keyword-only signature:

- `_single_tensor_sage`: the slow, literal reference, one tensor at a time.
- `_multi_tensor_sage`: the same arithmetic with `torch._foreach_*` ops.
- `_compiled_sage` (sage_core.optim.compiled): one fused elementwise kernel per tensor,
  built by `torch.compile` once per process and reused.

`SAGE.step` runs the same compiled kernel once over a whole group where the group's
tensors live in flat buffers (sage_core.optim.flat; CPU).

Imports only torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["SAGE", "BASES", "sage", "state_dtype_for"]

BASES: tuple[str, ...] = ("adamw", "adamax")
Base = Literal["adamw", "adamax"]

# The second-moment state key of each base, as in torch.optim.AdamW and torch.optim.Adamax.
_SECOND_MOMENT_KEY = {"adamw": "exp_avg_sq", "adamax": "exp_inf"}


def state_dtype_for(param: Tensor) -> torch.dtype:
    """Optimizer state and math are fp64 for fp64 parameters and fp32 for everything else
    (bf16 and fp16 parameters get fp32 state)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


class SAGE(Optimizer):
    r"""SAGE: sensitivity-guided adaptive learning rate, on top of AdamW or Adamax.

    Liang et al., "No Parameters Left Behind: Sensitivity Guided Adaptive Learning Rate for
    Training Large Transformer Models", ICLR 2022 (arXiv 2202.02664). The update follows
    the project's SAGE.md, which follows the authors' code. For a tensor p with gradient g,
    with ``I = |p * g|`` (p before the update) and all products elementwise:

    AdamW-SAGE (``base="adamw"``)::

        m    = beta1*m + (1-beta1)*g
        v    = beta2*v + (1-beta2)*g*g
        Ibar = beta3*Ibar + (1-beta3)*I
        Ihat = Ibar / (1 - beta3**step)
        mult = |I - Ihat| / (Ihat + eps**2)
        p    = p - lr * mult * sqrt(1-beta2**step)/(1-beta1**step) * m/(sqrt(v) + eps)
        p    = p - lr * weight_decay * p          # decoupled, on the updated p, no mult

    Adamax-SAGE (``base="adamax"``; no bias correction anywhere)::

        m      = beta1*m + (1-beta1)*g
        u      = max(beta2*u, |g| + eps)
        Ibar   = beta3*Ibar + (1-beta3)*I
        update = m/(u + eps) + weight_decay * p   # coupled decay, scaled by mult below
        mult   = |I - Ibar| / (Ibar + eps**2)
        p      = p - lr * mult * update

    A param group with ``"sage": False`` takes the plain base update (mult = 1) and keeps no
    ``Ibar`` state. For AdamW, ``mult`` is evaluated as ``|bc3*I - Ibar| / (Ibar + bc3*eps**2)``
    with ``bc3 = 1 - beta3**step``: the same quantity multiplied through by ``bc3 > 0``, which
    makes ``mult`` exactly 0 at step 1 in floating point as well (``Ihat == I``), where the
    literal division leaves a one-ulp residue on about one element in ten.

    Args:
        params: tensors, or param groups (dicts). A group may override any default below.
        lr: learning rate (default 1e-3). A scheduler may change it every step; the
            decoupled AdamW weight decay uses the current value too.
        betas: (beta1, beta2), the first- and second-moment coefficients (default (0.9, 0.999)).
        beta3: the sensitivity EMA coefficient (default 0.85; the paper advises 0.6 to 0.9).
        eps: added to the denominators; ``eps**2`` guards ``Ibar == 0`` (default 1e-6).
        weight_decay: decoupled (AdamW) or coupled (Adamax) decay (default 0.0).
        base: ``"adamw"`` or ``"adamax"`` (default ``"adamw"``).
        foreach: implementation choice. None (default) picks the fastest safe one;
            False forces the single-tensor reference; True forces ``torch._foreach_*``.
        compiled: True forces the torch.compile'd fused kernels (sage_core.optim.compiled),
            False forbids them, None (default) uses them when ``foreach`` is None, the
            group's step has at least ``COMPILE_MIN_NUMEL`` (2M) elements on CPU (or the
            kernel is already compiled in this process) and torch.compile works there (a
            C++ compiler); on CUDA the default is foreach, which measured faster for
            BERT-sized tensors. The kernels compile once per process (a few seconds;
            dynamic shapes; lr and step are passed as tensors, so a scheduler never
            triggers a recompile). On CPU a group that takes them is put in flat buffers
            (sage_core.optim.flat): its parameters' ``.data`` and gradients become views
            of one buffer each, and a step is one kernel call where the gradients stay
            put between steps.
        sage: the default for groups without a ``"sage"`` key (default True).

    Contracts: state (``step``, ``exp_avg``, ``exp_avg_sq`` or ``exp_inf``, and
    ``exp_avg_ipt`` = Ibar for SAGE groups) is fp32, or fp64 for fp64 parameters, whatever
    the parameter dtype; the math runs in that dtype and the result is cast back to the
    parameter's dtype. Gradients must be dense; clip them before ``step()`` (SAGE.md: I is
    computed from the clipped gradients). ``state_dict()`` round-trips bit-identically.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float = 0.85,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        base: Base = "adamw",
        foreach: bool | None = None,
        *,
        compiled: bool | None = None,
        sage: bool = True,
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, base=base,
            foreach=foreach, compiled=compiled, sage=sage,
        )
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        # per-group overrides get the same checks as the constructor's arguments
        _validate(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("compiled", None)
            group.setdefault("sage", True)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # new group dicts and state: the flat buffers are rebuilt (state copied) next step
        self._flat_groups: dict[int, Any] = {}
        self._flat_off: set[int] = set()

    def _flat_step(self, group: dict[str, Any]) -> bool:
        """Step ``group`` over its flat buffers (sage_core.optim.flat) where it qualifies:
        the compiled kernels are its implementation and every parameter has a gradient.
        False: nothing was done, take the per-tensor path."""
        from sage_core.optim.flat import FLAT_DEVICE_TYPES, FlatGroup

        flat_groups: dict[int, FlatGroup] = self.__dict__.setdefault("_flat_groups", {})
        flat_off: set[int] = self.__dict__.setdefault("_flat_off", set())
        key = id(group)
        flat = flat_groups.get(key)
        if flat is not None and not flat.valid(group, self.state):
            flat_groups.pop(key)
            flat = None
        if flat is None:
            params = group["params"]
            if (
                key in flat_off or not params or group["foreach"] is not None
                or params[0].device.type not in FLAT_DEVICE_TYPES
                or not _use_compiled(params, group["compiled"], group["base"], group["sage"])
            ):
                return False
            flat = FlatGroup.build(group, self.state, _SECOND_MOMENT_KEY[group["base"]])
            if flat is None:
                if all(p.grad is not None for p in params):
                    flat_off.add(key)  # it will not qualify later either
                return False
            flat_groups[key] = flat
        if not flat.all_have_grads():
            # from here on its params' steps differ: the per-tensor path, for good
            flat_groups.pop(key)
            flat_off.add(key)
            return False
        beta1, beta2 = group["betas"]
        hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, beta3=group["beta3"],
                     eps=group["eps"], weight_decay=group["weight_decay"])
        # held gradients: one kernel call; new gradient tensors again: read where they are
        done = flat.step(**hyper) if flat.take_grads() else flat.step_new_grads(**hyper)
        if done is None:
            return False  # gradients the kernel cannot read in place: per-tensor, this once
        if not done:  # the kernel failed to compile
            flat_groups.pop(key)
            flat_off.add(key)
            return False
        return True

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        second_moments: list[Tensor],
        exp_avg_ipts: list[Tensor],
        state_steps: list[Tensor],
    ) -> None:
        second_key = _SECOND_MOMENT_KEY[group["base"]]
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SAGE does not support sparse gradients")
            if p.is_complex():
                raise RuntimeError("SAGE does not support complex parameters")
            state = self.state[p]
            dtype = state_dtype_for(p)
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = _zeros_state(p, dtype)
                state[second_key] = _zeros_state(p, dtype)
            if second_key not in state:
                raise RuntimeError(
                    f"parameter state has no {second_key!r}: the group's base was changed "
                    f"to {group['base']!r} after training started"
                )
            if group["sage"] and "exp_avg_ipt" not in state:
                state["exp_avg_ipt"] = _zeros_state(p, dtype)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            second_moments.append(state[second_key])
            if group["sage"]:
                exp_avg_ipts.append(state["exp_avg_ipt"])
            state_steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step. ``closure`` re-evaluates the model and returns
        the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if self._flat_step(group):
                continue
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            second_moments: list[Tensor] = []
            exp_avg_ipts: list[Tensor] = []
            state_steps: list[Tensor] = []
            self._init_group(
                group, params, grads, exp_avgs, second_moments, exp_avg_ipts, state_steps
            )
            beta1, beta2 = group["betas"]
            sage(
                params, grads, exp_avgs, second_moments, exp_avg_ipts, state_steps,
                foreach=group["foreach"], compiled=group["compiled"], base=group["base"],
                sage=group["sage"], lr=group["lr"], beta1=beta1, beta2=beta2,
                beta3=group["beta3"], eps=group["eps"], weight_decay=group["weight_decay"],
            )
        return loss


def _zeros_state(p: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)


def _validate(group: dict[str, Any]) -> None:
    lr = group["lr"]
    if isinstance(lr, Tensor) or not (isinstance(lr, int | float) and 0.0 <= lr < math.inf):
        raise ValueError(f"Invalid learning rate: {lr}")
    betas = group["betas"]
    if not (isinstance(betas, tuple | list) and len(betas) == 2):
        raise ValueError(f"Invalid betas: {betas}")
    for index, beta in enumerate(betas):
        if not (isinstance(beta, int | float) and 0.0 <= beta < 1.0):
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    beta3 = group["beta3"]
    if not (isinstance(beta3, int | float) and 0.0 <= beta3 < 1.0):
        raise ValueError(f"Invalid beta3: {beta3}")
    eps = group["eps"]
    # eps > 0 matters: eps**2 is what keeps mult finite where Ibar == 0
    if not (isinstance(eps, int | float) and 0.0 < eps < math.inf):
        raise ValueError(f"Invalid epsilon value: {eps}")
    weight_decay = group["weight_decay"]
    if not (isinstance(weight_decay, int | float) and 0.0 <= weight_decay < math.inf):
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if group["base"] not in BASES:
        raise ValueError(f"Invalid base: {group['base']!r} (expected one of {BASES})")
    for key in ("foreach", "compiled"):
        if group[key] not in (None, True, False):
            raise ValueError(f"Invalid {key}: {group[key]!r} (expected None, True or False)")
    if not isinstance(group["sage"], bool):
        raise ValueError(f"Invalid sage: {group['sage']!r} (expected True or False)")
    if group["compiled"] is True and group["foreach"] is not None:
        raise ValueError(
            f"Conflicting options: compiled=True and foreach={group['foreach']} "
            "(compiled=True chooses the implementation; leave foreach=None)"
        )


def sage(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    second_moments: list[Tensor],
    exp_avg_ipts: list[Tensor],
    state_steps: list[Tensor],
    *,
    foreach: bool | None = None,
    compiled: bool | None = None,
    base: str,
    sage: bool,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
) -> None:
    """Functional SAGE step over lists of tensors; see `SAGE` for the arithmetic.

    ``second_moments`` holds v (adamw) or u (adamax); ``exp_avg_ipts`` is Ibar, one per
    param when ``sage`` is True and empty otherwise. Increments ``state_steps`` in place.
    """
    if not params:
        return
    if sage and len(exp_avg_ipts) != len(params):
        raise ValueError("sage=True needs one exp_avg_ipt (Ibar) tensor per parameter")
    impl: Callable[..., None]
    if foreach is False:
        impl = _single_tensor_sage
    elif foreach is None and _use_compiled(params, compiled, base, sage) or compiled is True:
        from sage_core.optim.compiled import _compiled_sage

        impl = _compiled_sage
    elif torch.jit.is_scripting():  # pragma: no cover - never scripted, kept like torch
        impl = _single_tensor_sage
    else:
        impl = _multi_tensor_sage
    with torch.no_grad():
        impl(
            params, grads, exp_avgs, second_moments, exp_avg_ipts, state_steps,
            base=base, sage=sage, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
            weight_decay=weight_decay,
        )


# Below this many elements in a step, the foreach path beats paying for a compilation.
COMPILE_MIN_NUMEL = 1 << 21
# Device types where the compiled kernels are the automatic choice. On CUDA they are not:
# with BERT 6x384 tensors on an H100, foreach took 3.1 to 3.7x a fused AdamW step, the
# compiled kernels 3.5x (one call per tensor: 15x; one graph for the whole group: 4.1x,
# after a 60 s compilation). compiled=True still uses them there.
AUTO_COMPILED_DEVICE_TYPES: frozenset[str] = frozenset({"cpu"})


def _use_compiled(
    params: list[Tensor], compiled: bool | None, base: str | None = None, sage: bool = True
) -> bool:
    """The automatic choice: large steps on CPU, and smaller ones whose kernel (``base``,
    ``sage``) this process has compiled already (for a larger group), which costs nothing."""
    if compiled is not None:
        return compiled
    device = params[0].device
    if device.type not in AUTO_COMPILED_DEVICE_TYPES:
        return False
    from sage_core.optim.compiled import compiled_kernels_available, kernel_is_warm

    if sum(p.numel() for p in params) < COMPILE_MIN_NUMEL and not (
        base is not None and kernel_is_warm(base, sage, device)
    ):
        return False
    return compiled_kernels_available(device)


def _single_tensor_sage(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    second_moments: list[Tensor],
    exp_avg_ipts: list[Tensor],
    state_steps: list[Tensor],
    *,
    base: str,
    sage: bool,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
) -> None:
    """The reference: SAGE.md's formulas, one tensor at a time, out of place."""
    for i, param in enumerate(params):
        m = exp_avgs[i]
        # the param itself when its dtype is the state's, otherwise an fp32 copy
        p = param.to(m.dtype)
        g = grads[i].to(m.dtype)
        state_steps[i] += 1
        step = int(state_steps[i].item())
        if sage:
            ibar = exp_avg_ipts[i]
            ipt = (p * g).abs()  # I, from p before this step's update
            ibar.copy_(beta3 * ibar + (1 - beta3) * ipt)
        if base == "adamw":
            v = second_moments[i]
            m.copy_(beta1 * m + (1 - beta1) * g)
            v.copy_(beta2 * v + (1 - beta2) * g * g)
            denom = v.sqrt() + eps
            if sage:
                bias_correction3 = 1 - beta3**step
                # |I - Ihat| / (Ihat + eps**2) with Ihat = Ibar / bc3, times bc3 / bc3
                mult = (bias_correction3 * ipt - ibar).abs() / (
                    ibar + eps**2 * bias_correction3
                )
            else:
                mult = torch.ones_like(p)
            step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
            p = p - step_size * mult * (m / denom)
            p = p * (1 - lr * weight_decay)
        else:
            u = second_moments[i]
            m.copy_(beta1 * m + (1 - beta1) * g)
            u.copy_(torch.maximum(beta2 * u, g.abs() + eps))
            update = m / (u + eps)
            if weight_decay > 0:
                update = update + weight_decay * p
            if sage:
                mult = (ipt - ibar).abs() / (ibar + eps**2)
                update = mult * update
            p = p - lr * update
        param.copy_(p)


def _multi_tensor_sage(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    second_moments: list[Tensor],
    exp_avg_ipts: list[Tensor],
    state_steps: list[Tensor],
    *,
    base: str,
    sage: bool,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
) -> None:
    """The reference's arithmetic with torch._foreach_* ops, per (device, dtype, step)."""
    torch._foreach_add_(state_steps, 1)
    for indices, step in _bucket(params, exp_avgs, state_steps):
        m = [exp_avgs[i] for i in indices]
        second = [second_moments[i] for i in indices]
        ps = [params[i] for i in indices]
        work = [p if p.dtype == mi.dtype else p.to(mi.dtype) for p, mi in zip(ps, m, strict=True)]
        g = [
            grads[i] if grads[i].dtype == mi.dtype else grads[i].to(mi.dtype)
            for i, mi in zip(indices, m, strict=True)
        ]
        if sage:
            ibar = [exp_avg_ipts[i] for i in indices]
            ipt = torch._foreach_mul(work, g)
            torch._foreach_abs_(ipt)
            torch._foreach_mul_(ibar, beta3)
            torch._foreach_add_(ibar, ipt, alpha=1 - beta3)
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, g, alpha=1 - beta1)
        if base == "adamw":
            torch._foreach_mul_(second, beta2)
            torch._foreach_addcmul_(second, g, g, value=1 - beta2)
            denom = torch._foreach_sqrt(second)
            torch._foreach_add_(denom, eps)
            update = torch._foreach_div(m, denom)
            if sage:
                bias_correction3 = 1 - beta3**step
                torch._foreach_mul_(ipt, bias_correction3)
                torch._foreach_sub_(ipt, ibar)
                torch._foreach_abs_(ipt)
                denom = torch._foreach_add(ibar, eps**2 * bias_correction3)
                torch._foreach_div_(ipt, denom)
                torch._foreach_mul_(update, ipt)
            step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
            torch._foreach_add_(work, update, alpha=-step_size)
            if weight_decay != 0:
                torch._foreach_mul_(work, 1 - lr * weight_decay)
        else:
            torch._foreach_mul_(second, beta2)
            absg = torch._foreach_abs(g)
            torch._foreach_add_(absg, eps)
            torch._foreach_maximum_(second, absg)
            update = torch._foreach_div(m, torch._foreach_add(second, eps))
            if weight_decay > 0:
                torch._foreach_add_(update, work, alpha=weight_decay)
            if sage:
                torch._foreach_sub_(ipt, ibar)
                torch._foreach_abs_(ipt)
                denom = torch._foreach_add(ibar, eps**2)
                torch._foreach_div_(ipt, denom)
                torch._foreach_mul_(update, ipt)
            torch._foreach_add_(work, update, alpha=-lr)
        for p, w in zip(ps, work, strict=True):
            if p is not w:
                p.copy_(w)


def _bucket(
    params: list[Tensor], exp_avgs: list[Tensor], state_steps: list[Tensor]
) -> list[tuple[list[int], int]]:
    """Indices grouped by (device, state dtype, step), each with its step count."""
    buckets: dict[tuple[torch.device, torch.dtype, int], list[int]] = {}
    for i, (p, m, step_t) in enumerate(zip(params, exp_avgs, state_steps, strict=True)):
        buckets.setdefault((p.device, m.dtype, int(step_t.item())), []).append(i)
    return [(indices, key[2]) for key, indices in buckets.items()]
