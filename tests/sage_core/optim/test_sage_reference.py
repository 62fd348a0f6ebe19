"""The single-tensor reference follows SAGE.md, checked against a hand-written transcription,
and the optimizer keeps its contracts (validation, state dtypes, state_dict, invariants)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sage_testing import make_grads, make_params, run_steps
from torch import Tensor

from sage_core.optim import SAGE


def literal_adamw_sage(
    params: list[Tensor], grads_per_step: list[list[Tensor]], lrs: list[float], *,
    betas: tuple[float, float], beta3: float, eps: float, wd: float, sage: bool = True,
    decay_before_update: bool = False,
) -> list[Tensor]:
    """SAGE.md's AdamW-SAGE block, line by line, in float64 (no optimizer code involved)."""
    beta1, beta2 = betas
    out = []
    for i, p0 in enumerate(params):
        p = p0.detach().double().clone()
        m = torch.zeros_like(p)
        v = torch.zeros_like(p)
        ibar = torch.zeros_like(p)
        for step, (grads, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
            g = grads[i].double()
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            denom = torch.sqrt(v) + eps
            big_i = torch.abs(p * g)
            ibar = beta3 * ibar + (1 - beta3) * big_i
            ihat = ibar / (1 - beta3**step)
            mult = torch.abs(big_i - ihat) / (ihat + eps**2) if sage else 1.0
            step_size = lr * mult * math.sqrt(1 - beta2**step) / (1 - beta1**step)
            if decay_before_update:  # a deliberately wrong variant, to show the test bites
                p = p - lr * wd * p
                p = p - step_size * m / denom
            else:
                p = p - step_size * m / denom
                p = p - lr * wd * p
        out.append(p)
    return out


def literal_adamax_sage(
    params: list[Tensor], grads_per_step: list[list[Tensor]], lrs: list[float], *,
    betas: tuple[float, float], beta3: float, eps: float, wd: float, sage: bool = True,
    decay_scaled_by_mult: bool = True,
) -> list[Tensor]:
    """SAGE.md's Adamax-SAGE block, line by line, in float64."""
    beta1, beta2 = betas
    out = []
    for i, p0 in enumerate(params):
        p = p0.detach().double().clone()
        m = torch.zeros_like(p)
        u = torch.zeros_like(p)
        ibar = torch.zeros_like(p)
        for grads, lr in zip(grads_per_step, lrs, strict=True):
            g = grads[i].double()
            m = beta1 * m + (1 - beta1) * g
            u = torch.maximum(beta2 * u, torch.abs(g) + eps)
            update = m / (u + eps)
            big_i = torch.abs(p * g)
            ibar = beta3 * ibar + (1 - beta3) * big_i
            decay = wd * p if wd > 0 else torch.zeros_like(p)
            mult = torch.abs(big_i - ibar) / (ibar + eps**2) if sage else 1.0
            if decay_scaled_by_mult:
                p = p - lr * mult * (update + decay)
            else:  # deliberately wrong variant
                p = p - lr * (mult * update + decay)
        out.append(p)
    return out


LRS = [0.05, 0.03, 0.08, 0.02]  # a changing lr, as a scheduler would set it


@pytest.mark.parametrize("base", ["adamw", "adamax"])
@pytest.mark.parametrize("use_sage", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_reference_matches_literal_formulas(base: str, use_sage: bool, weight_decay: float):
    steps = len(LRS)
    initial = make_params(torch.float64)
    grads = [make_grads(initial, s) for s in range(steps)]
    hyper = dict(betas=(0.8, 0.95), beta3=0.7, eps=1e-6, wd=weight_decay, sage=use_sage)
    literal = literal_adamw_sage if base == "adamw" else literal_adamax_sage
    expected = literal(initial, grads, LRS, **hyper)

    got, _ = run_steps(
        steps, dtype=torch.float64, lr_schedule=LRS, foreach=False, base=base, use_sage=use_sage,
        betas=(0.8, 0.95), beta3=0.7, eps=1e-6, weight_decay=weight_decay,
    )
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-13)


def test_literal_check_detects_decay_order_and_mult_scaling():
    """The literal comparison can tell SAGE.md's rule from near-miss variants."""
    initial = make_params(torch.float64)
    grads = [make_grads(initial, s) for s in range(len(LRS))]
    hyper = dict(betas=(0.8, 0.95), beta3=0.7, eps=1e-6, wd=0.3)
    got_w, _ = run_steps(
        len(LRS), dtype=torch.float64, lr_schedule=LRS, foreach=False, base="adamw",
        betas=(0.8, 0.95), beta3=0.7, weight_decay=0.3,
    )
    wrong_w = literal_adamw_sage(initial, grads, LRS, decay_before_update=True, **hyper)
    got_x, _ = run_steps(
        len(LRS), dtype=torch.float64, lr_schedule=LRS, foreach=False, base="adamax",
        betas=(0.8, 0.95), beta3=0.7, weight_decay=0.3,
    )
    wrong_x = literal_adamax_sage(initial, grads, LRS, decay_scaled_by_mult=False, **hyper)
    assert max((a - b).abs().max().item() for a, b in zip(got_w, wrong_w, strict=True)) > 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(got_x, wrong_x, strict=True)) > 1e-4


@pytest.mark.parametrize("foreach", [False, True, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_first_adamw_step_changes_only_weight_decay(foreach: bool | None, dtype: torch.dtype):
    lr, wd = 0.1, 0.2
    got, _ = run_steps(1, dtype=dtype, foreach=foreach, lr=lr, weight_decay=wd)
    for p0, p1 in zip(make_params(dtype), got, strict=True):
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        expected = (p0.detach().to(state_dtype) * (1 - lr * wd)).to(dtype)
        assert torch.equal(p1, expected)


@pytest.mark.parametrize("foreach", [False, True])
def test_first_adamw_step_without_decay_is_a_no_op(foreach: bool):
    got, _ = run_steps(1, foreach=foreach, lr=0.5)
    for p0, p1 in zip(make_params(), got, strict=True):
        assert torch.equal(p0.detach(), p1)


@pytest.mark.parametrize("base", ["adamw", "adamax"])
@pytest.mark.parametrize("foreach", [False, True])
def test_zero_parameters_never_move(base: str, foreach: bool):
    got, _ = run_steps(25, base=base, foreach=foreach, lr=0.1, weight_decay=0.1)
    assert torch.equal(got[0][0, :3], torch.zeros(3))
    assert (got[0][1:] != make_params()[0].detach()[1:]).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(beta3=1.5), "Invalid beta3: 1.5"),
        (dict(beta3=-0.1), "Invalid beta3: -0.1"),
        (dict(lr=-1.0), "Invalid learning rate: -1.0"),
        (dict(lr=float("nan")), "Invalid learning rate: nan"),
        (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
        (dict(betas=(0.9, -0.5)), "Invalid beta parameter at index 1: -0.5"),
        (dict(betas=(0.9,)), "Invalid betas: (0.9,)"),
        (dict(eps=0.0), "Invalid epsilon value: 0.0"),
        (dict(weight_decay=-0.01), "Invalid weight_decay value: -0.01"),
        (dict(base="sgd"), "Invalid base: 'sgd'"),
        (dict(foreach="yes"), "Invalid foreach: 'yes'"),
        (dict(compiled=True, foreach=False), "Conflicting options: compiled=True and foreach"),
        (dict(use_sage=1), "Invalid use_sage: 1"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SAGE(make_params(), **kwargs)


def test_invalid_group_override_is_rejected():
    params = make_params()
    with pytest.raises(ValueError, match="Invalid beta3: 2.0"):
        SAGE([{"params": params[:2]}, {"params": params[2:], "beta3": 2.0}])


def test_every_setting_is_a_default_and_groups_override_them():
    params = make_params()
    optimizer = SAGE(
        [{"params": params[:2], "lr": 0.5, "use_sage": False}, {"params": params[2:]}],
        lr=0.01, beta3=0.6, base="adamax",
    )
    assert set(optimizer.defaults) == {
        "lr", "betas", "beta3", "eps", "weight_decay", "base", "foreach", "compiled", "use_sage"
    }
    first, second = optimizer.param_groups
    assert (first["lr"], first["use_sage"], first["beta3"]) == (0.5, False, 0.6)
    assert (second["lr"], second["use_sage"], second["base"]) == (0.01, True, "adamax")


@pytest.mark.parametrize(
    ("dtype", "state_dtype"),
    [(torch.float32, torch.float32), (torch.float64, torch.float64),
     (torch.bfloat16, torch.float32), (torch.float16, torch.float32)],
)
@pytest.mark.parametrize("foreach", [False, True])
def test_state_is_fp32_or_fp64_and_lazy(
    dtype: torch.dtype, state_dtype: torch.dtype, foreach: bool
):
    params = make_params(dtype)
    optimizer = SAGE([{"params": params[:3]}, {"params": params[3:], "use_sage": False}],
                     foreach=foreach)
    assert len(optimizer.state) == 0
    params[1].grad = torch.ones_like(params[1])
    optimizer.step()
    assert list(optimizer.state) == [params[1]]  # no grad, no state
    for p, g in zip(params, make_grads(params, 0), strict=True):
        p.grad = g
    optimizer.step()
    for i, p in enumerate(params):
        state = optimizer.state[p]
        expected_keys = {"step", "exp_avg", "exp_avg_sq"} | ({"exp_avg_ipt"} if i < 3 else set())
        assert set(state) == expected_keys
        assert p.dtype == dtype
        for key in expected_keys - {"step"}:
            assert state[key].dtype == state_dtype
            assert state[key].shape == p.shape
    assert optimizer.state[params[1]]["step"].item() == 2
    assert optimizer.state[params[0]]["step"].item() == 1


def test_adamax_state_keys():
    _, optimizer = run_steps(2, base="adamax")
    assert set(next(iter(optimizer.state.values()))) == {
        "step", "exp_avg", "exp_inf", "exp_avg_ipt"
    }


@pytest.mark.parametrize("base", ["adamw", "adamax"])
def test_state_dict_round_trip_through_disk_continues_bit_identically(
    base: str, tmp_path: Path
):
    params = make_params()
    groups = [{"params": params[:3]}, {"params": params[3:], "use_sage": False, "lr": 0.02}]
    optimizer = SAGE(groups, lr=0.05, base=base, weight_decay=0.1)

    def train(opt: SAGE, ps: list[Tensor], steps: range) -> None:
        for step in steps:
            opt.param_groups[0]["lr"] = 0.05 / (1 + step)  # a scheduler's doing
            for p, g in zip(ps, make_grads(ps, step), strict=True):
                p.grad = g
            opt.step()

    train(optimizer, params, range(5))
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    copies = [p.detach().clone().requires_grad_() for p in params]

    train(optimizer, params, range(5, 12))

    fresh = SAGE(
        [{"params": copies[:3]}, {"params": copies[3:], "use_sage": False, "lr": 0.02}],
        lr=0.05, base=base, weight_decay=0.1,
    )
    fresh.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert fresh.param_groups[1]["use_sage"] is False
    train(fresh, copies, range(5, 12))
    for a, b in zip(params, copies, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(params, copies, strict=True):
        for key, value in optimizer.state[a].items():
            assert torch.equal(value, fresh.state[b][key]), key


def test_closure_loss_is_returned_and_sparse_grads_rejected():
    params = make_params()
    optimizer = SAGE(params)

    def closure() -> float:
        for p in params:
            p.grad = torch.ones_like(p)
        return 3.0

    assert optimizer.step(closure) == 3.0
    emb = torch.nn.Embedding(4, 3, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        SAGE(emb.parameters()).step()


def test_mult_mean_is_moderate_after_warmup():
    """A sanity check on the update's scale: SAGE.md says mean mult is near 0.5."""
    params = [torch.randn(256, 64, generator=torch.Generator().manual_seed(3))]
    optimizer = SAGE(params, lr=0.0)
    gen = torch.Generator().manual_seed(4)
    for _ in range(30):
        params[0].grad = torch.randn(256, 64, generator=gen)
        optimizer.step()
    state = optimizer.state[params[0]]
    ipt = (params[0] * params[0].grad).abs()
    bc3 = 1 - 0.85**30
    mult = (ipt - state["exp_avg_ipt"] / bc3).abs() / (state["exp_avg_ipt"] / bc3 + 1e-12)
    assert 0.3 < mult.median().item() < 1.5


def test_a_state_dict_saved_with_the_old_group_flag_loads(tmp_path: Path):
    """Checkpoints written before the group flag was renamed call it "sage"."""
    params = make_params()
    groups = [{"params": params[:3]}, {"params": params[3:], "use_sage": False}]
    optimizer = SAGE(groups, weight_decay=0.1)
    for p, g in zip(params, make_grads(params, 0), strict=True):
        p.grad = g
    optimizer.step()
    saved = optimizer.state_dict()
    for group in saved["param_groups"]:
        group["sage"] = group.pop("use_sage")
    torch.save(saved, tmp_path / "old.pt")

    copies = [p.detach().clone().requires_grad_() for p in params]
    fresh = SAGE([{"params": copies[:3]}, {"params": copies[3:], "use_sage": False}])
    fresh.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))
    assert [g["use_sage"] for g in fresh.param_groups] == [True, False]
    assert all("sage" not in g for g in fresh.param_groups)
    for ps, opt in ((params, optimizer), (copies, fresh)):
        for p, g in zip(ps, make_grads(ps, 1), strict=True):
            p.grad = g
        opt.step()
    for a, b in zip(params, copies, strict=True):
        assert torch.equal(a, b)
    assert "exp_avg_ipt" not in fresh.state[copies[4]]


def test_a_group_with_the_old_flag_name_is_refused():
    with pytest.raises(ValueError, match="Invalid param group key 'sage' \\(False\\)"):
        SAGE([{"params": make_params(), "sage": False}])
