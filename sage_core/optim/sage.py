"""The SAGE optimizer (AdamW-SAGE and Adamax-SAGE), as specified in SAGE.md.

Laid out like torch/optim/adamw.py: the `SAGE` class keeps state and hyperparameters, and
the functional `sage()` steps lists of tensors through one of three interchangeable
implementations with one keyword-only signature:

- `_single_tensor_sage`: the slow, literal reference, one tensor at a time.
- `_multi_tensor_sage`: the same arithmetic with `torch._foreach_*` ops.
- `_compiled_sage`: one fused elementwise kernel per large tensor (and one for the small
  ones packed together), built by `torch.compile` once per process and reused.

`_choose_implementation` picks one, once per call, from the ``foreach`` and ``compiled``
options; the thresholds of its automatic choice stand beside it. An explicit request that
cannot be honoured is refused (in `SAGE.__init__`, or by the failing compilation), never
swapped for another implementation.

Imports only torch and sage_core.names (constants).
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import sysconfig
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from sage_core.names import DEFAULT_BETA3

__all__ = ["SAGE", "BASES", "compiled_kernels_available", "sage", "state_dtype_for"]

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

    A param group with ``"use_sage": False`` takes the plain base update (mult = 1) and
    keeps no ``Ibar`` state. For AdamW, ``mult`` is evaluated as
    ``|bc3*I - Ibar| / (Ibar + bc3*eps**2)`` with ``bc3 = 1 - beta3**step``: the same
    quantity multiplied through by ``bc3 > 0``, which makes ``mult`` exactly 0 at step 1 in
    floating point as well (``Ihat == I``), where the literal division leaves a one-ulp
    residue on about one element in ten.

    Args:
        params: tensors, or param groups (dicts). A group may override any default below.
        lr: learning rate (default 1e-3). A scheduler may change it every step; the
            decoupled AdamW weight decay uses the current value too.
        betas: (beta1, beta2), the first- and second-moment coefficients (default (0.9, 0.999)).
        beta3: the sensitivity EMA coefficient (default ``sage_core.names.DEFAULT_BETA3``;
            the paper advises 0.6 to 0.9).
        eps: added to the denominators; ``eps**2`` guards ``Ibar == 0`` (default 1e-6).
        weight_decay: decoupled (AdamW) or coupled (Adamax) decay (default 0.0).
        base: ``"adamw"`` or ``"adamax"`` (default ``"adamw"``).
        foreach: False: the single-tensor reference; True: ``torch._foreach_*``; None
            (default): see ``compiled``.
        compiled: True: the torch.compile'd kernels (refused where torch.compile cannot
            build them for the parameters' device: a C++ compiler and Python's headers on
            CPU, Triton on CUDA; and with ``foreach`` set). False: foreach. None (default,
            with ``foreach`` None): the compiled kernels for a group of at least
            ``COMPILE_MIN_NUMEL`` elements on CPU where they can be built, else foreach
            (see `_choose_implementation`). The kernels compile once per process (a few
            seconds; dynamic shapes; lr and step are passed as tensors, so a scheduler
            never triggers a recompile); a compilation that fails raises.
        use_sage: the default for groups without a ``"use_sage"`` key (default True).

    Contracts: state (``step``, ``exp_avg``, ``exp_avg_sq`` or ``exp_inf``, and
    ``exp_avg_ipt`` = Ibar for SAGE groups) is fp32, or fp64 for fp64 parameters, whatever
    the parameter dtype; the math runs in that dtype and the result is cast back to the
    parameter's dtype. Gradients must be dense; clip them before ``step()`` (SAGE.md: I is
    computed from the clipped gradients). The optimizer touches only the parameters'
    values (in place), never their ``.data`` or ``.grad`` attributes. ``state_dict()``
    round-trips bit-identically, and a state dict saved before the group flag was renamed
    (``"sage"``) loads as ``"use_sage"``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float = DEFAULT_BETA3,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        base: Base = "adamw",
        foreach: bool | None = None,
        *,
        compiled: bool | None = None,
        use_sage: bool = True,
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, base=base,
            foreach=foreach, compiled=compiled, use_sage=use_sage,
        )
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "sage" in param_group:
            raise ValueError(
                f"Invalid param group key 'sage' ({param_group['sage']!r}): "
                "the flag is called 'use_sage'"
            )
        super().add_param_group(param_group)
        # per-group overrides get the same checks as the constructor's arguments
        group = self.param_groups[-1]
        _validate(group)
        if group["compiled"] is True:
            for device in {p.device for p in group["params"]}:
                if not compiled_kernels_available(device):
                    raise ValueError(
                        f"Invalid compiled: True (torch.compile cannot build SAGE's kernels "
                        f"for device {device} here); use compiled=False or None"
                    )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            # state dicts from before the group flag's rename call it "sage"
            if "sage" in group:
                group.setdefault("use_sage", group.pop("sage"))
            group.setdefault("compiled", None)
            group.setdefault("use_sage", True)

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
            if group["use_sage"] and "exp_avg_ipt" not in state:
                state["exp_avg_ipt"] = _zeros_state(p, dtype)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            second_moments.append(state[second_key])
            if group["use_sage"]:
                exp_avg_ipts.append(state["exp_avg_ipt"])
            state_steps.append(state["step"])

    def will_compile(self) -> bool:
        """Whether the next `step` will run the torch.compile'd kernels (so, the first
        time in this process, compile them): the same choice `step` makes, assuming every
        parameter gets a gradient. Cheap: it builds nothing."""
        groups = [[p for p in g["params"] if p.requires_grad] for g in self.param_groups]
        step_numel = sum(p.numel() for params in groups for p in params)
        return any(
            params and _choose_implementation(
                params, foreach=g["foreach"], compiled=g["compiled"], step_numel=step_numel,
            ) is _compiled_sage
            for g, params in zip(self.param_groups, groups, strict=True))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step. ``closure`` re-evaluates the model and returns
        the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups: list[tuple[dict[str, Any], list[list[Tensor]]]] = []
        for group in self.param_groups:
            # params, grads, exp_avgs, second_moments, exp_avg_ipts, state_steps
            lists: list[list[Tensor]] = [[], [], [], [], [], []]
            self._init_group(group, *lists)
            groups.append((group, lists))
        step_numel = sum(p.numel() for _, lists in groups for p in lists[0])
        for group, lists in groups:
            beta1, beta2 = group["betas"]
            sage(
                *lists, foreach=group["foreach"], compiled=group["compiled"],
                step_numel=step_numel, base=group["base"], use_sage=group["use_sage"],
                lr=group["lr"], beta1=beta1, beta2=beta2, beta3=group["beta3"],
                eps=group["eps"], weight_decay=group["weight_decay"],
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
    if not isinstance(group["use_sage"], bool):
        raise ValueError(f"Invalid use_sage: {group['use_sage']!r} (expected True or False)")
    _check_conflicts(group["foreach"], group["compiled"])


def _check_conflicts(foreach: bool | None, compiled: bool | None) -> None:
    if compiled is True and foreach is not None:
        raise ValueError(
            f"Conflicting options: compiled=True and foreach={foreach} "
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
    step_numel: int | None = None,
    base: str,
    use_sage: bool,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
) -> None:
    """Functional SAGE step over lists of tensors; see `SAGE` for the arithmetic and the
    options, and `_choose_implementation` for how ``foreach`` and ``compiled`` choose.

    ``second_moments`` holds v (adamw) or u (adamax); ``exp_avg_ipts`` is Ibar, one per
    param when ``use_sage`` is True and empty otherwise. ``step_numel``: how many elements
    the whole optimizer step covers, for the automatic choice (default: these params').
    Increments ``state_steps`` in place.
    """
    if not params:
        return
    if use_sage and len(exp_avg_ipts) != len(params):
        raise ValueError("use_sage=True needs one exp_avg_ipt (Ibar) tensor per parameter")
    impl = _choose_implementation(
        params, foreach=foreach, compiled=compiled, step_numel=step_numel
    )
    with torch.no_grad():
        impl(
            params, grads, exp_avgs, second_moments, exp_avg_ipts, state_steps,
            base=base, use_sage=use_sage, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3,
            eps=eps, weight_decay=weight_decay,
        )


# The automatic choice (foreach=None, compiled=None): the compiled kernels on these device
# types, for an optimizer step of at least COMPILE_MIN_NUMEL elements (below that, foreach
# beats paying for a compilation), where torch.compile can build them; foreach everywhere
# else. The size is the whole step's, so that a small group of a large model (biases,
# norms) shares its large groups' kernels: measured on CPU with BERT 6x384's blocks
# layout, its two small groups through foreach cost 2.5 ms more a step (+0.07x AdamW).
# Not on CUDA: with BERT 6x384 tensors on an H100, foreach took 3.1 to 3.7x a fused AdamW
# step, the compiled kernels 3.5x (one call per tensor: 15x), so compiled=True only.
COMPILED_DEFAULT_DEVICE_TYPES: frozenset[str] = frozenset({"cpu"})
COMPILE_MIN_NUMEL = 1 << 21
# Inside the compiled implementation: a tensor at least this big gets a kernel call of its
# own (18 us of host time a call on a quiet CPU, ~100 us on a loaded one: dynamo and AOT
# wrappers); smaller ones are packed, one call over their concatenation, then copied back
# (measured on CPU: BERT's 66 biases and norms in 0.3 ms instead of 1.2 ms). At least 2:
# sizes 0 and 1 would make the dynamic-shape kernel specialise (recompile).
OWN_CALL_MIN_NUMEL = 4096
# Those big tensors go KERNEL_ARITY to a call (one compiled graph that steps 8 tensor sets;
# the rest one call each): on a quiet 2-core CPU, BERT 6x384's blocks layout then took
# 1.45x a fused AdamW step instead of 1.53-1.58x with a call per tensor, for a first step of
# 8 s instead of 5 s (warm inductor cache; 27-47 s cold).
KERNEL_ARITY = 8


def _choose_implementation(
    params: list[Tensor], *, foreach: bool | None, compiled: bool | None,
    step_numel: int | None = None,
) -> Callable[..., None]:
    """The one place the implementation is chosen. An explicit option is obeyed (conflicting
    ones are refused); with both None, the compiled kernels where they pay and can be built
    (see COMPILED_DEFAULT_DEVICE_TYPES; ``step_numel``: the optimizer step's size, default
    ``params``'), else foreach. Deterministic: the same arguments give the same choice in
    any process."""
    _check_conflicts(foreach, compiled)
    if foreach is False:
        return _single_tensor_sage
    if compiled is True:
        return _compiled_sage
    if foreach is True or compiled is False:
        return _multi_tensor_sage
    device = params[0].device
    if (
        device.type in COMPILED_DEFAULT_DEVICE_TYPES
        and (sum(p.numel() for p in params) if step_numel is None else step_numel)
        >= COMPILE_MIN_NUMEL
        and compiled_kernels_available(device)
    ):
        return _compiled_sage
    return _multi_tensor_sage


def compiled_kernels_available(device: torch.device) -> bool:
    """Whether torch.compile can build the kernels for this device here: a C++ compiler and
    Python's headers for CPU, Triton for CUDA."""
    return _compiled_kernels_available(device.type)


@functools.cache  # asked on every automatic step; the answer is the machine's
def _compiled_kernels_available(device_type: str) -> bool:
    if not torch._dynamo.is_dynamo_supported():
        return False
    if device_type == "cpu":
        compilers = (os.environ.get("CXX", ""), "g++", "c++", "clang++")
        headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
        return headers.is_file() and any(c and shutil.which(c) for c in compilers)
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return has_triton()
    return False


def _single_tensor_sage(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    second_moments: list[Tensor],
    exp_avg_ipts: list[Tensor],
    state_steps: list[Tensor],
    *,
    base: str,
    use_sage: bool,
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
        if use_sage:
            ibar = exp_avg_ipts[i]
            ipt = (p * g).abs()  # I, from p before this step's update
            ibar.copy_(beta3 * ibar + (1 - beta3) * ipt)
        if base == "adamw":
            v = second_moments[i]
            m.copy_(beta1 * m + (1 - beta1) * g)
            v.copy_(beta2 * v + (1 - beta2) * g * g)
            denom = v.sqrt() + eps
            if use_sage:
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
            if use_sage:
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
    use_sage: bool,
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
        if use_sage:
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
            if use_sage:
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
            if use_sage:
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

# --- the compiled implementation -----------------------------------------------------------
#
# Eager `torch._foreach_*` code makes about fifteen passes over memory per step (and, on
# CPU, pays page faults for every large temporary); a fused kernel reads p, g, m, v, Ibar
# once and writes p, m, v, Ibar once, which is what SAGE.md's 9/7 bound assumes. Each
# kernel is a function of one tensor set (p, g, m, v[, Ibar]), passed as 1-D tensors, plus
# a small tensor of step scalars. It is compiled once per process with dynamic shapes:
# parameters of every size and rank reuse the same compiled code, and lr, step and the
# hyperparameters arrive as tensor values, so a scheduler changing lr every step never
# recompiles.

# Layout of the step-scalar tensor every kernel receives (one per device, dtype and step).
# (1 - beta) values are computed in float64 here, as the eager path's Python scalars are.
(
    BETA1, ONE_MINUS_BETA1, BETA2, ONE_MINUS_BETA2, BETA3, ONE_MINUS_BETA3, EPS, EPS_SQ,
    LR, WEIGHT_DECAY, STEP_SIZE, PREV_BIAS_CORRECTION3, EPS_SQ_BIAS_CORRECTION3, DECAY,
) = range(14)


def _adamw_sage_kernel(p: Tensor, g: Tensor, m: Tensor, v: Tensor, ibar: Tensor, s: Tensor):
    pf = p.to(m.dtype)
    gf = g.to(m.dtype)
    ipt = (pf * gf).abs()
    # SAGE.md's |I - Ihat| / (Ihat + eps**2) times bc3/bc3, with
    # bc3*I - Ibar_new = beta3 * ((1 - beta3**(step-1)) * I - Ibar_old): exactly 0 at step 1
    # even where the compiler contracts a*b - c into a fused multiply-add.
    numerator = s[BETA3] * (s[PREV_BIAS_CORRECTION3] * ipt - ibar).abs()
    ibar_new = s[BETA3] * ibar + s[ONE_MINUS_BETA3] * ipt
    mult = numerator / (ibar_new + s[EPS_SQ_BIAS_CORRECTION3])
    m_new = s[BETA1] * m + s[ONE_MINUS_BETA1] * gf
    v_new = s[BETA2] * v + s[ONE_MINUS_BETA2] * gf * gf
    update = m_new / (v_new.sqrt() + s[EPS])
    p_new = (pf - s[STEP_SIZE] * mult * update) * s[DECAY]
    p.copy_(p_new.to(p.dtype))
    m.copy_(m_new)
    v.copy_(v_new)
    ibar.copy_(ibar_new)


def _adamw_kernel(p: Tensor, g: Tensor, m: Tensor, v: Tensor, s: Tensor):
    pf = p.to(m.dtype)
    gf = g.to(m.dtype)
    m_new = s[BETA1] * m + s[ONE_MINUS_BETA1] * gf
    v_new = s[BETA2] * v + s[ONE_MINUS_BETA2] * gf * gf
    update = m_new / (v_new.sqrt() + s[EPS])
    p_new = (pf - s[STEP_SIZE] * update) * s[DECAY]
    p.copy_(p_new.to(p.dtype))
    m.copy_(m_new)
    v.copy_(v_new)


def _adamax_sage_kernel(p: Tensor, g: Tensor, m: Tensor, u: Tensor, ibar: Tensor, s: Tensor):
    pf = p.to(m.dtype)
    gf = g.to(m.dtype)
    ipt = (pf * gf).abs()
    ibar_new = s[BETA3] * ibar + s[ONE_MINUS_BETA3] * ipt
    mult = (ipt - ibar_new).abs() / (ibar_new + s[EPS_SQ])
    m_new = s[BETA1] * m + s[ONE_MINUS_BETA1] * gf
    u_new = torch.maximum(s[BETA2] * u, gf.abs() + s[EPS])
    update = m_new / (u_new + s[EPS]) + s[WEIGHT_DECAY] * pf
    p_new = pf - s[LR] * mult * update
    p.copy_(p_new.to(p.dtype))
    m.copy_(m_new)
    u.copy_(u_new)
    ibar.copy_(ibar_new)


def _adamax_kernel(p: Tensor, g: Tensor, m: Tensor, u: Tensor, s: Tensor):
    pf = p.to(m.dtype)
    gf = g.to(m.dtype)
    m_new = s[BETA1] * m + s[ONE_MINUS_BETA1] * gf
    u_new = torch.maximum(s[BETA2] * u, gf.abs() + s[EPS])
    update = m_new / (u_new + s[EPS]) + s[WEIGHT_DECAY] * pf
    p_new = pf - s[LR] * update
    p.copy_(p_new.to(p.dtype))
    m.copy_(m_new)
    u.copy_(u_new)


_KERNEL_SOURCES: dict[tuple[str, bool], Callable[..., None]] = {
    ("adamw", True): _adamw_sage_kernel,
    ("adamw", False): _adamw_kernel,
    ("adamax", True): _adamax_sage_kernel,
    ("adamax", False): _adamax_kernel,
}
_COMPILED_KERNELS: dict[tuple[str, bool, int], Callable[..., None]] = {}  # per process


def _compiled_kernel(base: str, use_sage: bool, arity: int = 1) -> Callable[..., None]:
    """The kernel for (base, use_sage), stepping ``arity`` tensor sets per call."""
    key = (base, use_sage, arity)
    if key not in _COMPILED_KERNELS:
        kernel = _KERNEL_SOURCES[(base, use_sage)]
        width = 5 if use_sage else 4

        def repeated(*args: Tensor) -> None:
            for j in range(arity):
                kernel(*args[j * width : (j + 1) * width], args[-1])

        _COMPILED_KERNELS[key] = torch.compile(
            kernel if arity == 1 else repeated, dynamic=True, fullgraph=True
        )
    return _COMPILED_KERNELS[key]


def _step_scalars(
    device: torch.device, dtype: torch.dtype, step: int, *, lr: float, beta1: float,
    beta2: float, beta3: float, eps: float, weight_decay: float,
) -> Tensor:
    bias_correction3 = 1 - beta3**step
    values = [0.0] * 14
    values[BETA1], values[ONE_MINUS_BETA1] = beta1, 1 - beta1
    values[BETA2], values[ONE_MINUS_BETA2] = beta2, 1 - beta2
    values[BETA3], values[ONE_MINUS_BETA3] = beta3, 1 - beta3
    values[EPS], values[EPS_SQ] = eps, eps**2
    values[LR], values[WEIGHT_DECAY] = lr, weight_decay
    values[STEP_SIZE] = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    values[PREV_BIAS_CORRECTION3] = 1 - beta3 ** (step - 1)
    values[EPS_SQ_BIAS_CORRECTION3] = eps**2 * bias_correction3
    values[DECAY] = 1 - lr * weight_decay
    return torch.tensor(values, dtype=dtype, device=device)


def _as_1d(t: Tensor) -> Tensor:
    """t (contiguous) as a 1-D tensor that is not a view: one compiled graph then serves
    every parameter rank, and dynamo has no view base to guard (its rank and strides)."""
    if t.dim() == 1 and not t._is_view():
        return t.detach()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,)
    )


def _flat(t: Tensor) -> Tensor:
    return t if t.dim() == 1 else t.view(-1)


def _compiled_sage(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    second_moments: list[Tensor],
    exp_avg_ipts: list[Tensor],
    state_steps: list[Tensor],
    *,
    base: str,
    use_sage: bool,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
) -> None:
    """The reference's arithmetic through the compiled kernels: a call per KERNEL_ARITY
    tensors of at least OWN_CALL_MIN_NUMEL elements (the rest one call each), one per
    (device, dtypes, step) for the smaller ones packed together. A tensor the kernels
    cannot read in place (not contiguous), and a pack of fewer than 2 elements, take the
    same arithmetic with foreach ops."""
    kernel = _compiled_kernel(base, use_sage)
    columns = [params, grads, exp_avgs, second_moments] + ([exp_avg_ipts] if use_sage else [])
    scalars: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}

    def step_scalars(i: int, step: int) -> Tensor:
        key = (params[i].device, exp_avgs[i].dtype, step)
        if key not in scalars:
            scalars[key] = _step_scalars(
                *key, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
                weight_decay=weight_decay,
            )
        return scalars[key]

    steps = [int(step) + 1 for step in torch.stack(state_steps).tolist()]
    done: list[int] = []
    leftovers: list[int] = []
    packs: dict[tuple[torch.device, int, tuple[torch.dtype, ...]], list[int]] = {}
    own: dict[tuple[torch.device, int, tuple[torch.dtype, ...]], list[int]] = {}
    for i, p in enumerate(params):
        tensors = [column[i] for column in columns]
        if not all(t.is_contiguous() for t in tensors):
            leftovers.append(i)
            continue
        key = (p.device, steps[i], tuple(t.dtype for t in tensors))
        if p.numel() >= OWN_CALL_MIN_NUMEL:
            own.setdefault(key, []).append(i)
        elif p.numel() > 0:
            packs.setdefault(key, []).append(i)
        else:
            leftovers.append(i)
    for (_, step, _), indices in own.items():
        scalars_i = step_scalars(indices[0], step)
        full = len(indices) - len(indices) % KERNEL_ARITY
        for start in range(0, len(indices), KERNEL_ARITY):
            chunk = indices[start : start + KERNEL_ARITY] if start < full else indices[start:]
            if start < full and KERNEL_ARITY > 1:
                inputs = [_as_1d(column[i]) for i in chunk for column in columns]
                _compiled_kernel(base, use_sage, KERNEL_ARITY)(*inputs, scalars_i)
            else:
                for i in chunk:
                    kernel(*[_as_1d(column[i]) for column in columns], scalars_i)
        done.extend(indices)
    for (_, step, _), indices in packs.items():
        sizes = [params[i].numel() for i in indices]
        if sum(sizes) < 2:
            leftovers.extend(indices)
            continue
        packed = [torch.cat([_flat(column[i]) for i in indices]) for column in columns]
        kernel(*packed, step_scalars(indices[0], step))
        for column, result in zip(columns, packed, strict=True):
            if column is not grads:
                torch._foreach_copy_([_flat(column[i]) for i in indices], result.split(sizes))
        done.extend(indices)
    if done:
        torch._foreach_add_([state_steps[i] for i in done], 1)
    if leftovers:
        _multi_tensor_sage(
            [params[i] for i in leftovers],
            [grads[i] for i in leftovers],
            [exp_avgs[i] for i in leftovers],
            [second_moments[i] for i in leftovers],
            [exp_avg_ipts[i] for i in leftovers] if use_sage else [],
            [state_steps[i] for i in leftovers],
            base=base, use_sage=use_sage, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3,
            eps=eps, weight_decay=weight_decay,
        )
