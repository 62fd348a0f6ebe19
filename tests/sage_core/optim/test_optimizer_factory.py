"""build_optimizer and make_optimizer give the optimizer each job-spec name stands for."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sage_core.optim import SAGE, build_optimizer, make_optimizer


class TwoBlocks(nn.Module):
    """Embedding, two repeated blocks (Linear + LayerNorm), and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)) for _ in range(2)
        )
        self.head = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def _train_step(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    loss = model(torch.tensor([[1, 2, 3]])).square().sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_sage_is_adamw_sage_on_the_blocks():
    torch.manual_seed(0)
    model = TwoBlocks()
    optimizer = make_optimizer(model, "sage", lr=1e-3, weight_decay=0.01, beta3=0.7)
    assert isinstance(optimizer, SAGE)
    assert optimizer.defaults["base"] == "adamw"
    assert optimizer.defaults["beta3"] == 0.7
    _train_step(optimizer, model)
    assert "exp_avg_ipt" in optimizer.state[model.blocks[0][0].weight]
    assert "exp_avg_ipt" not in optimizer.state[model.head.weight]
    assert "exp_avg_ipt" not in optimizer.state[model.blocks[0][1].weight]


def test_adamax_sage_and_plain_adamax():
    model = TwoBlocks()
    sage = make_optimizer(model, "adamax-sage", lr=1e-3)
    assert isinstance(sage, SAGE) and sage.defaults["base"] == "adamax"
    assert any(g["use_sage"] for g in sage.param_groups)
    plain = make_optimizer(model, "adamax", lr=1e-3, scope="all")
    assert isinstance(plain, SAGE) and plain.defaults["base"] == "adamax"
    assert all(g["use_sage"] is False for g in plain.param_groups)
    _train_step(plain, model)
    assert all("exp_avg_ipt" not in s for s in plain.state.values())
    assert all("exp_inf" in s for s in plain.state.values())


def test_adamw_is_torch_adamw_fused_on_cpu():
    model = TwoBlocks()
    optimizer = make_optimizer(model, "adamw", lr=1e-3, weight_decay=0.02)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["fused"] is True
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.02}
    _train_step(optimizer, model)


def test_adamw_falls_back_to_foreach_for_mixed_devices_or_dtypes():
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    optimizer = build_optimizer(params, "adamw", lr=1e-3)
    assert optimizer.defaults["fused"] is True  # same device, all floating
    ints = [nn.Parameter(torch.zeros(2)), torch.zeros(2, dtype=torch.int64)]
    optimizer = build_optimizer(ints, "adamw", lr=1e-3)
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]


def test_build_optimizer_on_plain_parameters_and_options():
    params = list(TwoBlocks().parameters())
    optimizer = build_optimizer(
        params, "sage", lr=2e-3, weight_decay=0.1, beta3=0.6, betas=(0.8, 0.9), eps=1e-7
    )
    (group,) = optimizer.param_groups
    assert (group["lr"], group["weight_decay"], group["beta3"]) == (2e-3, 0.1, 0.6)
    assert (group["betas"], group["eps"], group["use_sage"]) == ((0.8, 0.9), 1e-7, True)


def test_unknown_name_is_rejected():
    with pytest.raises(ValueError, match="Invalid optimizer name: 'sgd'"):
        build_optimizer(TwoBlocks().parameters(), "sgd", lr=1e-3)
