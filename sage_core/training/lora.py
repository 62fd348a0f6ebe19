"""LoRA (Hu et al. 2021) for causal LMs through `peft`: wrap, save (merged and adapter), resume.

`peft` does the LoRA work; this module makes three choices and writes no LoRA arithmetic of its
own beyond adding each layer's `get_delta_weight` to its base weight when saving.

Initialisation: peft's "orthogonal", not its default. peft's default sets lora_B = 0 (so that
the wrapped model starts as the base model). SAGE scales each element's step by the variation
of its sensitivity I = |theta * grad|, and with B = 0 every sensitivity is 0: B's because
theta = 0, A's because A's gradient flows through B and is 0 too. SAGE's multiplier
|I - Ibar| / (Ibar + eps**2) is then 0 at every step and the adapters never move (plain AdamW
moves B from its non-zero gradient). A tiny experiment (2-layer Llama and GPT-2, r=4, every
linear layer, a SAGE step per batch) measured: default init, max I of A and of B = 0.0 and no
adapter moved in 4 steps; orthogonal init, max I about 3e-3 for A and B and every adapter
moved. "orthogonal" draws A and B from complementary halves of a random orthogonal r x r
matrix, so both are non-zero while B @ A = 0 up to float rounding (measured max |B @ A| about
1.5e-8, logits within 1.5e-7 of the base model's): the wrapped model still starts as the
base. It needs an even r (rank(A) + rank(B) <= r with both non-zero rules out r = 1 for any
such init), so `apply_lora` refuses an odd r. Like any init it draws from torch's global RNG.
peft applies "orthogonal" to linear layers only (an embedding adapter keeps A = 0, which SAGE
cannot move), so `apply_lora` also refuses target_modules that name other layers.

Saving: a LoRA checkpoint folder holds the merged model at its root, a plain Hugging Face folder
that loads without peft (what a user downloads and serves), and the adapter in `ADAPTER_DIR`
(small; what resuming loads onto the base model). The merge never touches the training model:
merging in place and unmerging afterwards would leave the frozen base weights perturbed by
float rounding. Each merged weight is computed beside the model, moved to the CPU one layer at
a time, and handed to `save_pretrained` as its state dict.

GPT-2's transformers `Conv1D` stores its weight transposed; peft notices it and sets
`fan_in_fan_out`, and `get_delta_weight` returns the delta in the base weight's layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from transformers import PreTrainedModel

from sage_core.errors import InvalidSpecError
from sage_core.names import ADAPTER_DIR
from sage_core.schemas import LoraSettings

__all__ = ["apply_lora", "load_lora", "merged_state_dict", "save_lora"]


def apply_lora(model: nn.Module, settings: LoraSettings) -> PeftModel:
    """``model`` wrapped by peft with LoRA adapters as ``settings`` say, initialised
    "orthogonal" (see the module docstring): the base is frozen, the adapters are trainable.
    "all-linear" targets every linear layer but the output head."""
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft divides it by r: a float works
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        init_lora_weights="orthogonal",
    )
    wrapped = get_peft_model(model, config)  # type: ignore[arg-type]
    # peft inits other layer types (embeddings: A = 0) its own way, which SAGE cannot move
    others = sorted({name.rsplit(".", 1)[-1] for name, module in wrapped.named_modules()
                     if isinstance(module, LoraLayer) and not isinstance(module, LoraLinear)})
    if others:
        raise InvalidSpecError(
            f"LoRA target_modules must name linear layers; not linear: {', '.join(others)}",
            param="hyperparameters.lora.target_modules",
        )
    return wrapped


def merged_state_dict(model: PeftModel) -> dict[str, Tensor]:
    """The base model's state dict, with its own key names, on the CPU, with each LoRA layer's
    delta (peft's `get_delta_weight`) added to its base weight. ``model`` is not changed.
    Tensors shared by several keys (tied embeddings) stay shared."""
    adapter = model.active_adapter
    base = model.get_base_model()
    merged: dict[str, Tensor] = {}
    for name, module in base.named_modules():
        # every LoRA layer type (Linear, Embedding, Conv...) has r and get_delta_weight
        if isinstance(module, LoraLayer) and adapter in module.r:
            weight = module.get_base_layer().weight
            with torch.no_grad():
                delta = module.get_delta_weight(adapter)  # type: ignore[attr-defined]
                merged[f"{name}.weight"] = (weight + delta).cpu()
    on_cpu: dict[int, Tensor] = {}  # id of a parameter -> its CPU copy, so ties survive
    state: dict[str, Tensor] = {}
    for key, tensor in base.state_dict(keep_vars=True).items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        if key in merged:
            state[key] = merged[key]
        else:
            state[key] = on_cpu.setdefault(id(tensor), tensor.detach().cpu())
    return state


def save_lora(model: PeftModel, folder: Path) -> None:
    """Write the merged model at ``folder``'s root (config.json, model.safetensors,
    generation_config.json: `AutoModelForCausalLM.from_pretrained` loads it without peft) and
    the adapter in ``folder / ADAPTER_DIR`` (adapter_config.json, adapter_model.safetensors,
    whose base_model_name_or_path is where the base model was loaded from). ``model`` is not
    changed. The caller saves the tokenizer."""
    base = cast(PreTrainedModel, model.get_base_model())
    base.save_pretrained(folder, state_dict=merged_state_dict(model))
    model.save_pretrained(str(Path(folder) / ADAPTER_DIR))


def load_lora(base_path: str, folder: Path) -> PeftModel:
    """The base model from ``base_path`` (fp32) with the adapter saved in
    ``folder / ADAPTER_DIR``, trainable, to resume a job. Building the adapter draws from
    torch's RNG before its saved weights replace the draws: restore RNG states afterwards."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, Path(folder) / ADAPTER_DIR, is_trainable=True)
