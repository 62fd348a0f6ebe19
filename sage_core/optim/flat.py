"""SAGE's flat layout: one param group's parameters, gradients and state each in one
contiguous buffer, so that one compiled kernel call steps the whole group.

A kernel call per tensor costs host time (dynamo guards, AOT wrappers, Python) on every
one of a BERT's ~100 tensors, and the packing of small tensors costs extra memory passes;
over flat buffers a step is one call per group that reads p, g, m, v, Ibar once and writes
p, m, v, Ibar once (SAGE.md's 9 passes).

How the buffers are made, on the first step a group qualifies (`FlatGroup.build`):
- state (``exp_avg``, the second moment, ``exp_avg_ipt``) lives in flat buffers and
  ``optimizer.state[p]`` holds views of them, so ``state_dict()`` and ``load_state_dict()``
  work as before (a loaded state is copied into new buffers on the next step, bit for bit);
- each parameter's ``.data`` is re-pointed to a view of a flat parameter buffer (values
  unchanged; the Parameter objects, and so the model, stay the same);
- gradients are copied into a flat gradient buffer once and ``p.grad`` is re-pointed to
  views of it. Where the caller keeps them (``zero_grad(set_to_none=False)``, or gradients
  set once) backward accumulates into the views and every step is one kernel call. Where
  autograd hands over new tensors each step (``zero_grad(set_to_none=True)``), copying them
  all in would cost more than the step itself on CPU (measured: +9 ms on a 10 ms fused
  AdamW step of a 22.7M-parameter BERT), so those steps read each large gradient where it
  is, with a kernel call per large tensor, and copy only the small ones (biases, norms)
  into a small buffer, stepped with one call: the buffers put the small tensors first, so
  their parameters and state are one contiguous front slice (see FRESH_OWN_CALL_MIN_NUMEL).

A group qualifies when every parameter has a dense gradient, all share one device and the
state's dtype (fp32 or fp64; bf16 parameters keep the per-tensor path), all are at the same
step, and each parameter owns its storage or lies in a flat buffer made here before (no
parameter is a view of memory something else may own). The buffers are checked on every
step (data pointers, state identity); if anything changed underneath (a parameter moved, a
state was replaced), they are rebuilt, and if a parameter lacks a gradient the group goes
back to the per-tensor path for good (its parameters' steps now differ). The flat buffers
take as much memory as the per-tensor layout, plus one gradient buffer while gradients are
kept (it is freed when new gradient tensors keep coming, and only the small tensors'
gradient buffer is kept).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

from sage_core.optim import compiled

__all__ = ["FLAT_DEVICE_TYPES", "FlatGroup"]

# Device types where a compiled-kernel group is put in flat buffers. CUDA would gain most
# (one launch per group) but is not yet measured there.
FLAT_DEVICE_TYPES: frozenset[str] = frozenset({"cpu"})

# With new gradient tensors each step, a tensor at least this big gets a kernel call of its
# own (host time on CPU: ~20 us a call); smaller ones have their gradients copied into one
# buffer and share one call. On BERT-like models this splits biases and norms (< 4K) from
# weight matrices (> 100K), so the exact value matters little. At least 2: the kernel
# specialises (recompiles) for sizes 0 and 1.
FRESH_OWN_CALL_MIN_NUMEL = 1 << 16

# The flat parameter buffers made in this process (weakly held, by storage), of any SAGE
# optimizer, live or not: params that are views of them may be moved again.
_PARAM_STORAGES: dict[int, StorageWeakRef] = {}


def _is_flat_param_storage(t: Tensor) -> bool:
    ref = _PARAM_STORAGES.get(StorageWeakRef(t.untyped_storage()).cdata)
    return ref is not None and not ref.expired()


def _register_param_storage(t: Tensor) -> None:
    for key in [key for key, ref in _PARAM_STORAGES.items() if ref.expired()]:
        del _PARAM_STORAGES[key]
    ref = StorageWeakRef(t.untyped_storage())
    _PARAM_STORAGES[ref.cdata] = ref


class FlatGroup:
    """One param group's tensors in flat buffers, with views handed out to the params,
    their gradients and the optimizer state."""

    def __init__(
        self, group: dict[str, Any], params: list[Tensor], states: list[dict[str, Any]],
        second_key: str, step: int,
    ) -> None:
        first = params[0]
        dtype, device = first.dtype, first.device
        self.group = group
        self.base: str = group["base"]
        self.sage: bool = group["sage"]
        self.choice = (group["foreach"], group["compiled"])
        self.params = params
        self.states = states
        self.sizes = [p.numel() for p in params]
        total = sum(self.sizes)
        self.keys = ["exp_avg", second_key] + (["exp_avg_ipt"] if self.sage else [])
        # Layout: the small tensors first (in group order), then the large ones.
        small = [i for i, n in enumerate(self.sizes) if n < FRESH_OWN_CALL_MIN_NUMEL]
        self.large = [i for i, n in enumerate(self.sizes) if n >= FRESH_OWN_CALL_MIN_NUMEL]
        self.small = small
        self.order = small + self.large
        self.small_numel = sum(self.sizes[i] for i in small)
        layout_sizes = [self.sizes[i] for i in self.order]

        def flat_of(tensors: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
            """A zeroed buffer in the layout, filled from `tensors` if given, and its views
            in group order."""
            flat = torch.zeros(total, dtype=dtype, device=device)
            views: list[Tensor] = [torch.empty(0)] * len(params)
            for i, view in zip(self.order, flat.split(layout_sizes), strict=True):
                views[i] = view.view(params[i].shape)
            if tensors is not None:
                torch._foreach_copy_(views, tensors)
            return flat, views

        in_place = _laid_out_flat([params[i] for i in self.order])
        if in_place is not None:
            self.flat_param = in_place  # e.g. rebuilt after load_state_dict: nothing to copy
        else:
            self.flat_param, param_views = flat_of([p.detach() for p in params])
            for p, view in zip(params, param_views, strict=True):
                p.data = view
            _register_param_storage(self.flat_param)
        self.param_ptrs = [p.data_ptr() for p in params]
        self._flat_of = flat_of
        # The gradient buffer exists only while it is used: see take_grads.
        self.flat_grad: Tensor | None = None
        self.grad_views: list[Tensor] = []
        self.grad_ptrs: list[int | None] = [None] * len(params)
        self.grads_taken = False  # copied in once already
        self.foreign_grads: StorageWeakRef | None = None  # gradients seen, not taken
        for s in states:
            if "step" not in s:  # fresh: keys in the order _init_group gives them
                s["step"] = torch.tensor(float(step), dtype=torch.float32)
        self.steps = [s["step"] for s in states]
        self.flat_state: list[Tensor] = []
        for key in self.keys:
            existing = [s[key] for s in states] if all(key in s for s in states) else None
            flat, views = flat_of(existing)
            self.flat_state.append(flat)
            for s, view in zip(states, views, strict=True):
                s[key] = view
        # for steps with new gradient tensors: the small ones' gradient buffer (made on the
        # first such step), and 1-D aliases the kernel takes without view guards
        self.small_grad: Tensor | None = None
        self.front = [compiled._as_1d(t[: self.small_numel])
                      for t in (self.flat_param, *self.flat_state)]
        self.large_inputs = [
            [compiled._as_1d(p.data)] + [compiled._as_1d(s[key]) for key in self.keys]
            for p, s in ((params[i], states[i]) for i in self.large)
        ]

    @staticmethod
    def build(
        group: dict[str, Any], state: dict[Tensor, Any], second_key: str
    ) -> FlatGroup | None:
        """The group's flat buffers, or None where it does not qualify (see the module)."""
        params: list[Tensor] = group["params"]
        if len(params) == 0:
            return None
        first = params[0]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        if first.dtype != dtype or first.device.type not in FLAT_DEVICE_TYPES:
            return None
        ranges = []
        for p in params:
            g = p.grad
            if g is None or g.is_sparse or p.dtype != dtype or p.device != first.device:
                return None
            owns = (
                p.storage_offset() == 0
                and p.untyped_storage().nbytes() == p.numel() * p.element_size()
            )
            if not owns and not _is_flat_param_storage(p):
                return None  # a view into memory something else may own
            ranges.append(p.data_ptr())
        if len(set(ranges)) != len(ranges):
            return None  # the same tensor twice
        states = [state[p] for p in params]
        stepped = [s for s in states if s]
        if stepped and len(stepped) != len(states):
            return None  # some fresh, some already stepped
        steps = {float(s["step"]) for s in stepped}
        if len(steps) > 1:
            return None
        keys = ["exp_avg", second_key] + (["exp_avg_ipt"] if group["sage"] else [])
        for key in keys if stepped else []:
            present = sum(key in s for s in stepped)
            if present not in (0, len(stepped)) or present == 0 and key != "exp_avg_ipt":
                return None  # e.g. a base changed mid-training: the per-tensor path says so
            if any(s[key].dtype != dtype or s[key].is_sparse for s in stepped if key in s):
                return None
        step = int(steps.pop()) if steps else 0
        return FlatGroup(group, params, states, second_key, step)

    def valid(self, group: dict[str, Any], state: dict[Tensor, Any]) -> bool:
        """Whether the buffers still back this group's params and state."""
        if (
            group is not self.group or group["base"] != self.base or group["sage"] != self.sage
            or (group["foreach"], group["compiled"]) != self.choice
        ):
            return False
        params = group["params"]
        if len(params) != len(self.params):
            return False
        for p, mine, ptr, s in zip(params, self.params, self.param_ptrs, self.states, strict=True):
            if p is not mine or p.data_ptr() != ptr or state.get(p) is not s:
                return False
        return True

    def all_have_grads(self) -> bool:
        return all(p.grad is not None for p in self.params)

    def take_grads(self) -> bool:
        """Make the gradients views of the flat gradient buffer, copying in those it does not
        hold yet; False where that does not pay: gradients it did not hold on the last step
        were replaced by new tensors since (zero_grad(set_to_none=True)), so they will be
        every step, and reading the large ones where they are (`step_new_grads`) is cheaper
        than copying them all. Held gradients, or the same foreign ones two steps running
        (set_to_none=False), are copied once."""
        moved = [
            i for i, (p, ptr) in enumerate(zip(self.params, self.grad_ptrs, strict=True))
            if p.grad.data_ptr() != ptr  # type: ignore[union-attr]
        ]
        if not moved:
            return True
        # a weak reference keeps the storage's address from being reused, so equal
        # addresses mean the same storage
        seen = StorageWeakRef(self.params[moved[0]].grad.untyped_storage())  # type: ignore[union-attr]
        last = self.foreign_grads
        kept = last is not None and not last.expired() and last.cdata == seen.cdata
        if self.grads_taken and not kept:
            self.foreign_grads = seen
            # New tensors every step from now on, most likely: free the buffer (for a BERT
            # base, as big as the model) until gradients are kept again.
            self.flat_grad, self.grad_views = None, []
            self.grad_ptrs = [None] * len(self.params)
            return False
        self.grads_taken = True
        self.foreign_grads = None
        if self.flat_grad is None:
            self.flat_grad, self.grad_views = self._flat_of(None)
            self.grad_ptrs = [g.data_ptr() for g in self.grad_views]  # all in `moved`
        views = [self.grad_views[i] for i in moved]
        torch._foreach_copy_(views, [self.params[i].grad for i in moved])  # type: ignore[misc]
        for i, view in zip(moved, views, strict=True):
            self.params[i].grad = view
        return True

    def step(
        self, *, lr: float, beta1: float, beta2: float, beta3: float, eps: float,
        weight_decay: float,
    ) -> bool:
        """One step over the flat buffers, with the gradients in place (`take_grads`): one
        kernel call. False (nothing written) if the kernel failed to compile."""
        assert self.flat_grad is not None, "take_grads first"
        inputs = [self.flat_param, self.flat_grad, *self.flat_state]
        return self._run([inputs], lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
                         weight_decay=weight_decay)

    def step_new_grads(
        self, *, lr: float, beta1: float, beta2: float, beta3: float, eps: float,
        weight_decay: float,
    ) -> bool | None:
        """One step with gradients the buffers do not hold (`take_grads` said False): the
        small tensors' gradients copied into one buffer and stepped with one kernel call over
        the front of the flat buffers, each large tensor stepped with a call of its own that
        reads its gradient where it is. None (nothing written) where a gradient cannot be
        read so (not contiguous, another dtype): the per-tensor path then takes the step.
        False (nothing written) if the kernel failed to compile."""
        flat = self.flat_param
        grads: list[Tensor] = [p.grad for p in self.params]  # type: ignore[misc]
        large_grads = [grads[i] for i in self.large]
        if any(g.dtype != flat.dtype or not g.is_contiguous() for g in large_grads):
            return None
        if self.small_numel == 1:
            return None  # size 1 would make the dynamic-shape kernel recompile
        batches = [[inputs[0], compiled._as_1d(g), *inputs[1:]]
                   for inputs, g in zip(self.large_inputs, large_grads, strict=True)]
        if self.small_numel:
            if self.small_grad is None:
                self.small_grad = torch.empty(self.small_numel, dtype=flat.dtype,
                                              device=flat.device)
            views = self.small_grad.split([self.sizes[i] for i in self.small])
            torch._foreach_copy_(list(views), [grads[i].reshape(-1) for i in self.small])
            batches.insert(0, [self.front[0], self.small_grad, *self.front[1:]])
        return self._run(batches, lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, eps=eps,
                         weight_decay=weight_decay)

    def _run(
        self, batches: list[list[Tensor]], *, lr: float, beta1: float, beta2: float,
        beta3: float, eps: float, weight_decay: float,
    ) -> bool:
        """The kernel over each batch of (p, g, state...) tensors, then step += 1; False
        (nothing written) if the kernel failed to compile, which the first call finds out:
        every batch has the same dtypes, and the kernel takes any size from 2 up."""
        flat = self.flat_param
        kernel = compiled._kernel(self.base, self.sage)
        signature = (self.base, self.sage, flat.device.type, *(t.dtype for t in batches[0]))
        if signature in compiled._BROKEN:
            return False
        # read back: steps where take_grads declined may have gone the per-tensor path
        step = int(self.steps[0].item()) + 1
        scalars = compiled._step_scalars(
            flat.device, flat.dtype, step, lr=lr, beta1=beta1, beta2=beta2,
            beta3=beta3, eps=eps, weight_decay=weight_decay,
        )
        if not compiled._run_kernel(kernel, signature, batches[0], scalars):
            return False
        for inputs in batches[1:]:
            kernel(*inputs, scalars)
        torch._foreach_add_(self.steps, 1)
        return True


def _laid_out_flat(params: list[Tensor]) -> Tensor | None:
    """The flat parameter buffer that holds ``params`` back to back, in order, and nothing
    else, if there is one (as a 1-D tensor over its whole storage)."""
    first = params[0]
    if first.storage_offset() != 0 or not _is_flat_param_storage(first):
        return None
    storage = first.untyped_storage()
    offset = first.data_ptr()
    for p in params:
        if p.data_ptr() != offset or not p.is_contiguous() or p.dtype != first.dtype:
            return None
        offset += p.numel() * p.element_size()
    if offset - first.data_ptr() != storage.nbytes():
        return None
    total = sum(p.numel() for p in params)
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(
        storage, 0, (total,), (1,)
    )
