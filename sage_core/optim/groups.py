"""Which parameters get SAGE and which get weight decay, chosen by module type (SAGE.md).

Works for any architecture without knowing its parameter names: the repeated blocks are
the modules inside an `nn.ModuleList` (the transformer layers of BERT, GPT-2, T5, ViT...),
and the layers that get SAGE are the linear ones among them (`nn.Linear`, and transformers'
`Conv1D`, recognised by class name so that this module imports only torch). A model with no
linear layer inside an `nn.ModuleList` has no blocks to choose from: scope "blocks" falls back
to "all" there (`find_sage_scope` says so), rather than leaving SAGE with nothing to step.

Convolutions are not linear layers here. On vision models this means: ViT's block linears
get SAGE, its patch-embedding conv does not; ConvNeXt's pointwise `nn.Linear` layers get
SAGE, its depthwise and downsampling convs do not; a ResNet (convs only in its blocks)
falls back to "all" (tests/sage_core/optim/test_groups_vision.py).

peft's LoRA wrappers need no special case: the wrapper (`peft.tuners.lora.Linear`) is not an
`nn.Linear` and owns no parameters itself; its frozen `base_layer` is skipped for being frozen;
its adapters `lora_A`/`lora_B` are `nn.Linear` layers inside the block, so they get SAGE.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sage_core.names import SAGE_SCOPES, SageScope

__all__ = ["find_sage_scope", "sage_param_groups", "is_linear_layer", "is_norm_layer"]

NO_BLOCKS_REASON = (
    "no repeated blocks found in the model (no linear layer inside an nn.ModuleList); "
    "SAGE applies to every trainable tensor (sage_scope=all)"
)


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


def find_sage_scope(model: nn.Module, scope: SageScope) -> tuple[SageScope, str | None]:
    """The scope `sage_param_groups` applies to ``model`` when asked for ``scope``, and why it
    differs, if it does: ``("all", reason)`` for "blocks" on a model with no linear layer inside
    a repeated block (frozen ones count: a frozen block is still a block), else
    ``(scope, None)``."""
    if scope not in SAGE_SCOPES:
        raise ValueError(f"Invalid scope: {scope!r} (expected one of {SAGE_SCOPES})")
    if scope == "blocks":
        blocks = _block_module_ids(model)
        if not any(id(m) in blocks and is_linear_layer(m) for m in model.modules()):
            return "all", NO_BLOCKS_REASON
    return scope, None


def sage_param_groups(
    model: nn.Module, weight_decay: float = 0.01, scope: SageScope = "blocks"
) -> list[dict[str, Any]]:
    """Param groups for `SAGE` (also valid for any torch optimizer, which ignores "use_sage").

    ``scope="blocks"``: the weights and biases of the linear layers inside the model's
    repeated blocks get ``"use_sage": True``; everything else (embeddings, norms, pooler, task
    head) is plain (``"use_sage": False``); on a model without such blocks it means "all"
    (`find_sage_scope`). ``scope="all"``: every trainable tensor gets SAGE.
    Weight decay is ``weight_decay`` except for biases, parameters of norm layers and every
    parameter with fewer than 2 dimensions, which get 0.0. Frozen parameters are skipped, a
    tensor shared by several modules appears once, and empty groups are dropped. Each
    group carries a readable "name" (sage_decay, sage_no_decay, plain_decay,
    plain_no_decay).
    """
    scope, _ = find_sage_scope(model, scope)
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
