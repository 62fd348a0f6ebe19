"""Memory of a causal-LM training run: gradient checkpointing, and a check before the first step
that the run fits on the GPU.

Gradient checkpointing keeps only each layer's input in the forward and recomputes the layer in
the backward: about a third more compute for a fraction of the activation memory. "auto" turns
it on for models over a billion parameters on CUDA, where activations of a long micro-batch
rival the weights; on smaller models or the CPU the recompute costs more than the memory is
worth. It uses non-reentrant `torch.utils.checkpoint` (use_reentrant=False), which lets
gradients reach the parameters of a segment whose inputs need no gradient, so a peft model
with a frozen embedding needs no special case (transformers 5 still hooks the embedding output
to require grad, as peft's guides ask for reentrant checkpointing; it is harmless).

`check_memory_fits` refuses a run whose estimated footprint exceeds the free GPU memory, with a
message that says what to change, instead of letting it fail with CUDA's out-of-memory error
after the data is tokenised and the model loaded. The estimate (`estimate_training_memory`) is
exact for what it can count and coarse for activations:

- parameters not yet on the device, at their dtype's size (fp32: 4 B); those already there are
  in use and out of the free memory already;
- gradients of trainable parameters, at the parameter's size;
- optimizer state per trainable parameter, fp32: SAGE keeps exp_avg, exp_avg_sq (or exp_inf)
  and exp_avg_ipt (12 B) for the tensors in its SAGE groups and two (8 B) for the rest;
  AdamW and Adamax keep two (8 B);
- a bf16 copy of every weight that autocast makes for the forward and autograd keeps for the
  backward (2 B per parameter);
- activations of one micro-batch (batch_size // gradient_accumulation_steps sequences of
  max_seq_length tokens): ACTIVATION_BYTES per token, layer and hidden unit, the 16-bit count of
  Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
  34 s b h per layer) without the attention scores that SDPA / flash attention do not keep.
  With checkpointing, each layer's bf16 input (2 B per token and hidden unit) plus one layer
  recomputed in full. A coarse figure: real layers differ (gated MLPs, grouped KV heads, the
  attention kernel), and padding makes most micro-batches shorter than max_seq_length;
- logits of the micro-batch and their gradient, fp32: tokens * vocab * 4 B * 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from peft import PeftModel
from torch import nn
from transformers import PretrainedConfig

from sage_core.errors import TrainingError
from sage_core.names import SAGE_OPTIMIZERS
from sage_core.optim import sage_param_groups
from sage_core.schemas import ResolvedHyperparameters

__all__ = [
    "ACTIVATION_BYTES",
    "MemoryEstimate",
    "check_memory_fits",
    "enable_gradient_checkpointing",
    "estimate_training_memory",
    "gradient_checkpointing_wanted",
]

AUTO_CHECKPOINTING_MIN_PARAMETERS = 1_000_000_000
ACTIVATION_BYTES = 34  # per token, layer and hidden unit, in bf16 (see the module docstring)
CHECKPOINTED_ACTIVATION_BYTES = 2  # a checkpointed layer keeps its bf16 input alone
GIB = 2**30


def gradient_checkpointing_wanted(
    setting: bool | str, model: nn.Module, device: torch.device
) -> bool:
    """``setting`` when it is True or False; for "auto", whether ``device`` is CUDA and
    ``model`` (frozen parameters included) has over a billion parameters."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"Invalid gradient_checkpointing: {setting!r}")
    return device.type == "cuda" and (
        sum(p.numel() for p in model.parameters()) > AUTO_CHECKPOINTING_MIN_PARAMETERS)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on non-reentrant gradient checkpointing in a Hugging Face model, plain or wrapped by
    peft."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    base.activation_checkpointing_enable(  # type: ignore[operator]
        activation_checkpointing_kwargs={"use_reentrant": False})


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs on its device, by kind (see the module docstring)."""

    parameters: int
    gradients: int
    optimizer_state: int
    weight_copies: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return (self.parameters + self.gradients + self.optimizer_state + self.weight_copies
                + self.activations + self.logits)

    def __str__(self) -> str:
        parts = ", ".join(f"{name.replace('_', ' ')} {getattr(self, name) / GIB:.2f}"
                          for name in self.__dataclass_fields__)
        return f"{self.total / GIB:.2f} GiB ({parts})"


def _optimizer_state_bytes(model: nn.Module, hp: ResolvedHyperparameters) -> int:
    if hp.optimizer not in SAGE_OPTIMIZERS:
        return sum(8 * p.numel() for p in model.parameters() if p.requires_grad)
    groups = sage_param_groups(model, weight_decay=hp.weight_decay, scope=hp.sage_scope)
    return sum((12 if g["use_sage"] else 8) * p.numel() for g in groups for p in g["params"])


def estimate_training_memory(
    model: nn.Module, hp: ResolvedHyperparameters, device: torch.device, *, checkpointing: bool,
    shards: int = 1,
) -> MemoryEstimate:
    """What training ``model`` with ``hp`` on ``device`` takes there, coarsely. ``shards``:
    the processes whose devices share the weights, gradients and optimizer state (FSDP);
    each holds its part of those, and activations and logits of its own micro-batch."""
    config = cast(PretrainedConfig, model.config)
    layers: int = config.num_hidden_layers
    hidden: int = config.hidden_size
    vocab: int = config.vocab_size
    tokens = hp.batch_size // hp.gradient_accumulation_steps * hp.max_seq_length
    unique = {id(p): p for p in model.parameters()}.values()  # tied tensors once
    trainable = [p for p in unique if p.requires_grad]
    if checkpointing:
        per_token = hidden * (CHECKPOINTED_ACTIVATION_BYTES * layers + ACTIVATION_BYTES)
    else:
        per_token = hidden * ACTIVATION_BYTES * layers
    return MemoryEstimate(
        parameters=sum(p.numel() * p.element_size() // shards for p in unique
                       if p.device.type != device.type),
        gradients=sum(p.numel() * p.element_size() for p in trainable) // shards,
        optimizer_state=_optimizer_state_bytes(model, hp) // shards,
        weight_copies=2 * sum(p.numel() for p in unique) // shards,
        activations=tokens * per_token,
        logits=tokens * vocab * 4 * 2,
    )


def check_memory_fits(
    model: nn.Module, hp: ResolvedHyperparameters, device: torch.device, *,
    free_bytes: int | None = None, shards: int = 1,
) -> None:
    """Raise `TrainingError` (code "out_of_memory") when training ``model`` with ``hp`` on
    ``device`` would not fit in its free memory, by `estimate_training_memory`; the message
    gives the estimate, the free memory and what to change. ``free_bytes`` overrides what CUDA
    reports (tests). On a device other than CUDA, without ``free_bytes``: nothing to check.
    ``shards``: see `estimate_training_memory`."""
    if free_bytes is None:
        if device.type != "cuda":
            return
        free, _ = torch.cuda.mem_get_info(device)
        # memory torch's caching allocator holds but does not use is free to this run too
        free_bytes = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(
            device)
    checkpointing = gradient_checkpointing_wanted(hp.gradient_checkpointing, model, device)
    estimate = estimate_training_memory(model, hp, device, checkpointing=checkpointing,
                                        shards=shards)
    if estimate.total <= free_bytes:
        return
    micro_batch = hp.batch_size // hp.gradient_accumulation_steps
    remedies = [
        f"a smaller batch_size or more gradient_accumulation_steps (now {hp.batch_size} and "
        f"{hp.gradient_accumulation_steps}: micro-batches of {micro_batch})",
        f"a shorter max_seq_length (now {hp.max_seq_length})",
    ]
    if hp.lora is None:
        remedies.append("lora (trains small adapters, no gradients or optimizer state for "
                        "the base model)")
    if not checkpointing:
        remedies.append("gradient_checkpointing: true")
    raise TrainingError(
        f"estimated training memory {estimate} exceeds the {free_bytes / GIB:.2f} GiB free on "
        f"{device}; try " + "; ".join(remedies),
        code="out_of_memory",
    )
