"""Gradient checkpointing (same loss and gradients, plain and LoRA) and the memory check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from sage_core.errors import TrainingError
from sage_core.schemas import Hyperparameters, JobSpec, LoraSettings, ResolvedHyperparameters
from sage_core.testing import build_tiny_llama
from sage_core.training.lora import apply_lora
from sage_core.training.memory import (
    check_memory_fits,
    enable_gradient_checkpointing,
    estimate_training_memory,
    gradient_checkpointing_wanted,
)

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), layers=3)


def _model(path: Path, lora: bool) -> nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return apply_lora(model, LoraSettings(r=4, dropout=0.0)) if lora else model


def _hp(**values: Any) -> ResolvedHyperparameters:
    lora = values.pop("lora", None)
    resolved = JobSpec(model="tiny", task="chat", hyperparameters=Hyperparameters(
        lora=lora, **{k: v for k, v in values.items() if k in Hyperparameters.model_fields}),
    ).resolve().hyperparameters
    return resolved.model_copy(update=values)


def _loss_and_grads(model: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()  # dropout is 0 in the tiny Llama and its adapters
    ids = torch.randint(0, model.config.vocab_size, (2, 16),
                        generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.requires_grad}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_checkpointing_gives_the_same_loss_and_gradients(llama_path: Path, lora: bool):
    loss, grads = _loss_and_grads(_model(llama_path, lora))
    model = _model(llama_path, lora)
    enable_gradient_checkpointing(model)
    layers = [m for m in model.modules() if type(m).__name__ == "LlamaDecoderLayer"]
    assert layers and all(m.gradient_checkpointing for m in layers)
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model)
    torch.testing.assert_close(checkpointed_loss, loss, atol=1e-6, rtol=0)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=0)


def test_non_reentrant_checkpointing_needs_no_input_grads_for_lora(llama_path: Path):
    _, grads = _loss_and_grads(_model(llama_path, lora=True))
    model = _model(llama_path, lora=True)
    enable_gradient_checkpointing(model)
    model.get_base_model().disable_input_require_grads()  # type: ignore[operator]
    _, checkpointed = _loss_and_grads(model)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=0)


def test_checkpointing_wanted(llama_path: Path):
    model = _model(llama_path, lora=False)
    assert gradient_checkpointing_wanted(True, model, CPU)
    assert not gradient_checkpointing_wanted(False, model, CUDA)
    assert not gradient_checkpointing_wanted("auto", model, CUDA)  # far below 1e9
    big = nn.Linear(40_000, 25_001, bias=False, device="meta")  # 1.00004e9, no memory
    assert gradient_checkpointing_wanted("auto", big, CUDA)
    assert not gradient_checkpointing_wanted("auto", big, CPU)
    with pytest.raises(ValueError, match="Invalid gradient_checkpointing: 'yes'"):
        gradient_checkpointing_wanted("yes", model, CUDA)


def test_a_tiny_model_fits_in_plenty_and_not_in_too_little(llama_path: Path):
    model, hp = _model(llama_path, lora=False), _hp(gradient_checkpointing=False)
    check_memory_fits(model, hp, CUDA, free_bytes=2**40)
    estimate = estimate_training_memory(model, hp, CUDA, checkpointing=False)
    check_memory_fits(model, hp, CUDA, free_bytes=estimate.total)
    with pytest.raises(TrainingError) as caught:
        check_memory_fits(model, hp, CUDA, free_bytes=estimate.total - 1)
    error = caught.value
    assert error.code == "out_of_memory"
    for words in ("estimated training memory", "GiB free on cuda", "smaller batch_size",
                  "gradient_accumulation_steps", "max_seq_length (now 1024)", "lora",
                  "gradient_checkpointing: true"):
        assert words in error.message, words


def test_remedies_already_taken_are_not_offered(llama_path: Path):
    model = _model(llama_path, lora=True)
    hp = _hp(lora={"r": 4}, gradient_checkpointing=True)
    with pytest.raises(TrainingError) as caught:
        check_memory_fits(model, hp, CUDA, free_bytes=1)
    assert "lora" not in caught.value.message
    assert "gradient_checkpointing" not in caught.value.message


def test_nothing_to_check_on_cpu(llama_path: Path):
    check_memory_fits(_model(llama_path, lora=False), _hp(), CPU)  # no free_bytes: no check


def test_the_estimate_adds_up(llama_path: Path):
    model = _model(llama_path, lora=False)
    hp = _hp(optimizer="adamw", batch_size=8, gradient_accumulation_steps=4, max_seq_length=64)
    config = model.config
    n = sum(p.numel() for p in model.parameters())  # untied: no tensor counted twice
    tokens = 2 * 64
    plain = estimate_training_memory(model, hp, CUDA, checkpointing=False)
    assert (plain.parameters, plain.gradients, plain.optimizer_state, plain.weight_copies) == (
        4 * n, 4 * n, 8 * n, 2 * n)
    assert plain.activations == tokens * 34 * config.hidden_size * config.num_hidden_layers
    assert plain.logits == tokens * config.vocab_size * 8
    assert estimate_training_memory(model, hp, CPU, checkpointing=False).parameters == 0
    checkpointed = estimate_training_memory(model, hp, CUDA, checkpointing=True)
    assert checkpointed.activations == tokens * config.hidden_size * (
        2 * config.num_hidden_layers + 34)
    # SAGE: a third state tensor for the block projections, two for the rest
    sage = estimate_training_memory(model, _hp(optimizer="sage"), CUDA, checkpointing=False)
    blocks = sum(p.numel() for name, p in model.named_parameters() if name.endswith("_proj.weight"))
    assert sage.optimizer_state == 12 * blocks + 8 * (n - blocks)


def test_lora_needs_much_less_than_full_fine_tuning(llama_path: Path):
    hp = _hp(max_seq_length=8, batch_size=1)  # weights dominate, as in a real model
    full = estimate_training_memory(_model(llama_path, False), hp, CUDA, checkpointing=False)
    lora = estimate_training_memory(_model(llama_path, True), hp, CUDA, checkpointing=False)
    assert lora.gradients + lora.optimizer_state < (full.gradients + full.optimizer_state) / 5
    assert lora.total < full.total * 0.6


def test_shards_split_the_weights_and_optimizer_state_not_the_activations(
        llama_path: Path) -> None:
    model, hp = _model(llama_path, lora=False), _hp()
    whole = estimate_training_memory(model, hp, CUDA, checkpointing=False)
    half = estimate_training_memory(model, hp, CUDA, checkpointing=False, shards=2)
    for name in ("parameters", "gradients", "optimizer_state", "weight_copies"):
        assert getattr(half, name) == getattr(whole, name) // 2, name
    assert (half.activations, half.logits) == (whole.activations, whole.logits)
    # too big for one device, it fits on two
    check_memory_fits(model, hp, CUDA, free_bytes=half.total, shards=2)
    with pytest.raises(TrainingError):
        check_memory_fits(model, hp, CUDA, free_bytes=half.total)
