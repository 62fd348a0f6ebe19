"""SAGE on a peft LoRA model: the adapters get SAGE, the frozen base gets nothing and never
moves, with each optimizer name."""

from __future__ import annotations

import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from sage_core.names import OPTIMIZERS
from sage_core.optim import SAGE, make_optimizer, sage_param_groups

ADAPTER = re.compile(r".*\.lora_[AB]\.default\.weight")
LORA_TARGETS = 2 * 7  # two layers of q/k/v/o_proj and gate/up/down_proj


def tiny_lora_llama(init_lora_weights: bool | str = True) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    ))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                        init_lora_weights=init_lora_weights)
    return get_peft_model(model, config)


def _snapshot(model: nn.Module, trainable: bool) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()
            if p.requires_grad == trainable}


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 99, (2, 12), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_lora_wrapper_is_not_a_linear_layer_and_holds_no_parameter():
    from peft.tuners.lora import Linear as LoraLinear

    model = tiny_lora_llama()
    wrappers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert len(wrappers) == LORA_TARGETS
    for wrapper in wrappers:
        assert not isinstance(wrapper, nn.Linear)
        assert not list(wrapper.parameters(recurse=False))
        assert not wrapper.base_layer.weight.requires_grad


def test_exactly_the_adapters_get_sage():
    model = tiny_lora_llama()
    groups = sage_param_groups(model, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["sage_decay"]
    names = {id(p): name for name, p in model.named_parameters()}
    chosen = [names[id(p)] for p in groups[0]["params"]]
    assert len(chosen) == len(set(chosen)) == 2 * LORA_TARGETS
    assert all(ADAPTER.fullmatch(name) for name in chosen)
    assert set(chosen) == {name for name, p in model.named_parameters() if p.requires_grad}


def test_sage_steps_move_only_the_adapters():
    # peft's "orthogonal" init: lora_A and lora_B both non-zero with B @ A == 0, so the
    # wrapped model starts as the base model and SAGE has a non-zero |theta * grad| to use
    model = tiny_lora_llama("orthogonal")
    optimizer = make_optimizer(model, "sage", lr=1e-2, weight_decay=0.0)
    assert isinstance(optimizer, SAGE)
    base, start = _snapshot(model, trainable=False), _snapshot(model, trainable=True)
    _train(model, optimizer, steps=1)
    # step 1's SAGE multiplier is 0 (Ihat == I), and there is no weight decay to apply
    after_one = _snapshot(model, trainable=True)
    assert all(torch.equal(start[name], after_one[name]) for name in start)
    _train(model, optimizer, steps=3)
    after = _snapshot(model, trainable=True)
    assert all(not torch.equal(start[name], after[name]) for name in start)
    assert all(torch.equal(p, base[name]) for name, p in model.named_parameters()
               if not p.requires_grad)
    assert all("exp_avg_ipt" in optimizer.state[p] for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_leaves_the_frozen_base_alone(name: str):
    model = tiny_lora_llama("orthogonal")
    optimizer = make_optimizer(model, name, lr=1e-2)  # type: ignore[arg-type]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable
    base, start = _snapshot(model, trainable=False), _snapshot(model, trainable=True)
    _train(model, optimizer, steps=3)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert all(not torch.equal(p, start[n]) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["sage", "adamax-sage"])
def test_sage_cannot_move_adapters_from_peft_default_init(name: str):
    """peft's default init sets lora_B = 0, so lora_B's |theta * grad| is 0, and lora_A's
    gradient (through B) is 0 too: SAGE's multiplier stays 0 and the adapter never trains.
    A LoRA run with a SAGE optimizer needs an init with both factors non-zero."""
    model = tiny_lora_llama()
    optimizer = make_optimizer(model, name, lr=1e-2, weight_decay=0.0)  # type: ignore[arg-type]
    start = _snapshot(model, trainable=True)
    _train(model, optimizer, steps=3)
    assert all(torch.equal(p, start[n]) for n, p in model.named_parameters() if p.requires_grad)
    plain = make_optimizer(model, "adamw", lr=1e-2, weight_decay=0.0)
    _train(model, plain, steps=2)
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters()
               if p.requires_grad)
