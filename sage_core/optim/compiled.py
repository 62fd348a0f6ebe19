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

__all__ = ["compiled_kernels_available", "kernel_is_warm"]

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


def kernel_is_warm(base: str, sage: bool, device: torch.device) -> bool:
    """Whether this process has already compiled the kernel for (base, sage) on this device
    type, so that using it for more tensors costs no compilation."""
    return any(signature[:3] == (base, sage, device.type) for signature in _WARM)


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


# Per device type, the smallest tensor worth a kernel call of its own. A call costs
# ~18 us of host time (dynamo and AOT wrappers). On CPU, smaller tensors are packed: one
# call over their concatenation per step, then copied back (measured: 66 BERT biases and
# norms in 0.3 ms instead of 1.2 ms). On a GPU the host time of a call dwarfs the kernel
# of all but huge tensors (measured on an H100 with BERT 6x384 tensors: a call per tensor
# is 15x slower than fused AdamW, foreach 3.1 to 3.7x), so there the rest goes through
# foreach, whose launches each cover many tensors.
OWN_CALL_MIN_NUMEL: dict[str, int] = {"cpu": 4096}
DEFAULT_OWN_CALL_MIN_NUMEL = 1 << 23
PACKING_DEVICE_TYPES: frozenset[str] = frozenset({"cpu"})


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


def _run_kernel(
    kernel: Callable[..., None], signature: tuple[object, ...], inputs: list[Tensor],
    scalars: Tensor,
) -> bool:
    """Run the kernel; False (after a warning) if it had to be compiled and that failed."""
    if signature in _WARM:
        kernel(*inputs, scalars)
        return True
    try:
        kernel(*inputs, scalars)
    except Exception:  # compilation failed: nothing was written
        logger.warning(
            "torch.compile failed for SAGE (%s); using the foreach implementation",
            ", ".join(map(str, signature)), exc_info=True,
        )
        _BROKEN.add(signature)
        return False
    _WARM.add(signature)
    return True


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
    """Same signature and arithmetic as `_single_tensor_sage`, through the compiled kernels:
    one call per large tensor, one per step for the packed small ones (CPU), and foreach
    for the rest."""
    kernel = _kernel(base, sage)
    columns = [params, grads, exp_avgs, second_moments] + ([exp_avg_ipts] if sage else [])
    scalars: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}

    def step_scalars(p: Tensor, dtype: torch.dtype, step: int) -> Tensor:
        key = (p.device, dtype, step)
        if key not in scalars:
            scalars[key] = _step_scalars(
                p.device, dtype, step, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3,
                eps=eps, weight_decay=weight_decay,
            )
        return scalars[key]

    done: list[int] = []
    leftovers: list[int] = []
    packs: dict[tuple[tuple[object, ...], torch.device, int], list[int]] = {}
    for i, p in enumerate(params):
        tensors = [column[i] for column in columns]
        signature = (base, sage, p.device.type, *(t.dtype for t in tensors))
        if signature in _BROKEN or not all(t.is_contiguous() for t in tensors):
            leftovers.append(i)
            continue
        step = int(state_steps[i].item()) + 1
        own_min = OWN_CALL_MIN_NUMEL.get(p.device.type, DEFAULT_OWN_CALL_MIN_NUMEL)
        if p.numel() >= max(own_min, 2):  # below 2: the size-0/1 specialisation recompiles
            inputs = [_as_1d(t) for t in tensors]
            ran = _run_kernel(
                kernel, signature, inputs, step_scalars(p, exp_avgs[i].dtype, step)
            )
            (done if ran else leftovers).append(i)
        elif p.device.type in PACKING_DEVICE_TYPES and p.numel() > 0:
            packs.setdefault((signature, p.device, step), []).append(i)
        else:
            leftovers.append(i)
    for (signature, _, step), indices in packs.items():
        if sum(params[i].numel() for i in indices) < 2:
            leftovers.extend(indices)
            continue
        packed = [torch.cat([_flat(column[i]) for i in indices]) for column in columns]
        first = params[indices[0]]
        if not _run_kernel(
            kernel, signature, packed, step_scalars(first, exp_avgs[indices[0]].dtype, step)
        ):
            leftovers.extend(indices)
            continue
        sizes = [params[i].numel() for i in indices]
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
            [exp_avg_ipts[i] for i in leftovers] if sage else [],
            [state_steps[i] for i in leftovers],
            base=base, sage=sage, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
            weight_decay=weight_decay,
        )
