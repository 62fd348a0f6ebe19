"""SAGE's fast path: one fused elementwise kernel per tensor, built by torch.compile.

Eager `torch._foreach_*` code makes about fifteen passes over memory per step (and, on
CPU, pays page faults for every large temporary); a fused kernel reads p, g, m, v, Ibar
once and writes p, m, v, Ibar once, which is what SAGE.md's 9/7 bound assumes.

Each kernel is a function of one tensor set (p, g, m, v[, Ibar]), passed as 1-D tensors,
plus a small tensor of step scalars. It is compiled once per process with dynamic shapes:
parameters of every size and rank reuse the same compiled code, and lr, step and the
hyperparameters arrive as tensor values, so a scheduler changing lr every step never
recompiles. Tensors the kernel cannot take (non-contiguous, too small to repay a call: see
KERNEL_MIN_NUMEL, or whose dtypes failed to compile) go through `_multi_tensor_sage`, which
does the same arithmetic; a compile failure is logged once as a warning.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable

import torch
from torch import Tensor

from sage_core.optim.sage import _multi_tensor_sage

__all__ = ["compiled_kernels_available"]

logger = logging.getLogger(__name__)

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
# Per process: the compiled kernels, and the (kernel, device type, dtypes) signatures that
# compiled fine or failed to compile (those go through foreach from then on).
_COMPILED: dict[tuple[str, bool], Callable[..., None]] = {}
_WARM: set[tuple[object, ...]] = set()
_BROKEN: set[tuple[object, ...]] = set()


def _kernel(base: str, sage: bool) -> Callable[..., None]:
    key = (base, sage)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_KERNEL_SOURCES[key], dynamic=True, fullgraph=True)
    return _COMPILED[key]


def compiled_kernels_available(device: torch.device) -> bool:
    """Whether torch.compile can build the kernels for this device here: a C++ compiler
    for CPU, Triton for CUDA. Other devices take the foreach path."""
    if not torch._dynamo.is_dynamo_supported():
        return False
    if device.type == "cpu":
        compilers = (os.environ.get("CXX", ""), "g++", "c++", "clang++")
        return any(c and shutil.which(c) for c in compilers)
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return has_triton()
    return False


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


# Smallest tensor worth a kernel call of its own, per device type. On CPU every tensor of
# 2 or more elements is (below 2, the size 0/1 specialisation would cost a recompile). On a
# GPU one call costs ~25 us of host time, which only a large tensor repays; the many small
# ones go through foreach, whose multi-tensor launches cover many tensors at once.
KERNEL_MIN_NUMEL: dict[str, int] = {"cpu": 2}
DEFAULT_KERNEL_MIN_NUMEL = 1 << 20


def _fits_kernel(tensors: list[Tensor]) -> bool:
    numel = tensors[0].numel()
    device_type = tensors[0].device.type
    if numel < max(2, KERNEL_MIN_NUMEL.get(device_type, DEFAULT_KERNEL_MIN_NUMEL)):
        return False
    return all(t.is_contiguous() and t.numel() == numel for t in tensors)


def _as_1d(t: Tensor) -> Tensor:
    """t (contiguous) as a 1-D tensor that is not a view: one compiled graph then serves
    every parameter rank, and dynamo has no view base to guard (its rank and strides)."""
    if t.dim() == 1 and not t._is_view():
        return t.detach()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,)
    )


def _compiled_sage(
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
    """Same signature and arithmetic as `_single_tensor_sage`, one compiled kernel per tensor."""
    kernel = _kernel(base, sage)
    scalars: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}
    leftovers: list[int] = []
    for i, p in enumerate(params):
        tensors = [p, grads[i], exp_avgs[i], second_moments[i]]
        if sage:
            tensors.append(exp_avg_ipts[i])
        signature = (base, sage, p.device.type, *(t.dtype for t in tensors))
        if signature in _BROKEN or not _fits_kernel(tensors):
            leftovers.append(i)
            continue
        state_dtype = exp_avgs[i].dtype
        step = int(state_steps[i].item()) + 1
        key = (p.device, state_dtype, step)
        if key not in scalars:
            scalars[key] = _step_scalars(
                p.device, state_dtype, step, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3,
                eps=eps, weight_decay=weight_decay,
            )
        inputs = [_as_1d(t) for t in tensors]
        if signature in _WARM:
            kernel(*inputs, scalars[key])
        else:
            try:
                kernel(*inputs, scalars[key])
            except Exception:  # compilation failed: nothing was written, use foreach
                logger.warning(
                    "torch.compile failed for SAGE (%s); using the foreach implementation",
                    ", ".join(map(str, signature)), exc_info=True,
                )
                _BROKEN.add(signature)
                leftovers.append(i)
                continue
            _WARM.add(signature)
        state_steps[i] += 1
    if leftovers:
        _multi_tensor_sage(
            [params[i] for i in leftovers],
            [grads[i] for i in leftovers],
            [exp_avgs[i] for i in leftovers],
            [second_moments[i] for i in leftovers],
            [exp_avg_ipts[i] for i in leftovers] if sage else [],
            [state_steps[i] for i in leftovers],
            base=base, sage=sage, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
            weight_decay=weight_decay,
        )
