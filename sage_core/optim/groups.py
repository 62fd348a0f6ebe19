"""Which parameters get SAGE and which get weight decay, chosen by module type (SAGE.md).

Works for any architecture without knowing its parameter names: the repeated blocks are
the modules inside an `nn.ModuleList` (the transformer layers of BERT, GPT-2, T5, ViT...),
and the layers that get SAGE are the linear ones among them (`nn.Linear`, and transformers'
`Conv1D`, recognised by class name so that this module imports only torch).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sage_core.names import SAGE_SCOPES, SageScope

__all__ = ["sage_param_groups", "is_linear_layer", "is_norm_layer"]


def is_linear_layer(module: nn.Module) -> bool:
    """nn.Linear or a subclass, or transformers' Conv1D (GPT-2's transposed linear layer)."""
    return isinstance(module, nn.Linear) or any(
        cls.__name__ == "Conv1D" for cls in type(module).__mro__
    )


def is_norm_layer(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm, T5LayerNorm, GroupNorm, BatchNorm...: any class named *Norm*."""
    return "Norm" in type(module).__name__


def _block_module_ids(model: nn.Module) -> set[int]:
    """ids of every module that sits inside an nn.ModuleList (the repeated blocks)."""
    inside: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for child in module.children():
                inside.update(id(m) for m in child.modules())
    return inside


def sage_param_groups(
    model: nn.Module, weight_decay: float = 0.01, scope: SageScope = "blocks"
) -> list[dict[str, Any]]:
    """Param groups for `SAGE` (also valid for any torch optimizer, which ignores "use_sage").

    ``scope="blocks"``: the weights and biases of the linear layers inside the model's
    repeated blocks get ``"use_sage": True``; everything else (embeddings, norms, pooler, task
    head) is plain (``"use_sage": False``). ``scope="all"``: every trainable tensor gets SAGE.
    Weight decay is ``weight_decay`` except for biases, parameters of norm layers and every
    parameter with fewer than 2 dimensions, which get 0.0. Frozen parameters are skipped, a
    tensor shared by several modules appears once, and empty groups are dropped. Each
    group carries a readable "name" (sage_decay, sage_no_decay, plain_decay,
    plain_no_decay).
    """
    if scope not in SAGE_SCOPES:
        raise ValueError(f"Invalid scope: {scope!r} (expected one of {SAGE_SCOPES})")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    blocks = _block_module_ids(model)
    # id(param) -> (param, uses sage, decays); first owner wins except that SAGE sticks
    chosen: dict[int, tuple[Tensor, bool, bool]] = {}
    for module in model.modules():
        linear_in_block = id(module) in blocks and is_linear_layer(module)
        norm = is_norm_layer(module)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            use_sage = scope == "all" or linear_in_block
            decays = not (norm or name.endswith("bias") or param.ndim < 2)
            if id(param) in chosen:
                _, sage_before, decays_before = chosen[id(param)]
                use_sage = use_sage or sage_before
                decays = decays and decays_before
            chosen[id(param)] = (param, use_sage, decays)
    layout = (
        ("sage_decay", True, True),
        ("sage_no_decay", True, False),
        ("plain_decay", False, True),
        ("plain_no_decay", False, False),
    )
    groups: list[dict[str, Any]] = []
    for group_name, use_sage, decays in layout:
        params = [p for p, s, d in chosen.values() if s == use_sage and d == decays]
        if params:
            groups.append({
                "name": group_name,
                "params": params,
                "use_sage": use_sage,
                "weight_decay": weight_decay if decays else 0.0,
            })
    return groups
