"""The flat layout (sage_core.optim.flat): a compiled-kernel group's params, grads and state
in one buffer each, stepped by one kernel call. It agrees with the reference, keeps
state_dict round trips bit-identical, and steps aside where it cannot hold.

Tensors are tiny so that each kernel variant compiles in about a second."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sage_testing import make_grads, make_params
from test_sage_parity import TOLERANCES
from torch import Tensor, nn

import sage_core.optim.compiled as compiled_module
import sage_core.optim.flat as flat_module
from sage_core.optim import SAGE

pytestmark = pytest.mark.skipif(
    not compiled_module.compiled_kernels_available(torch.device("cpu")),
    reason="torch.compile cannot build CPU kernels here (no C++ compiler)",
)


def _train(
    optimizer: SAGE, params: list[Tensor], steps: range, *, keep_grads: bool = False
) -> None:
    """keep_grads: write each step's gradients into the tensors p.grad already holds (as
    backward after zero_grad(set_to_none=False)); else hand over new ones (set_to_none=True)."""
    for step in steps:
        for group in optimizer.param_groups:
            group["lr"] = 0.05 / (1 + step)  # a scheduler's doing
        for p, g in zip(params, make_grads(params, step), strict=True):
            if keep_grads and p.grad is not None:
                p.grad.copy_(g)
            else:
                p.grad = g
        optimizer.step()


def _flat_groups(optimizer: SAGE) -> list[flat_module.FlatGroup]:
    return list(optimizer.__dict__.get("_flat_groups", {}).values())


def test_params_grads_and_state_are_views_of_one_buffer_each():
    params = make_params()
    optimizer = SAGE(params, compiled=True, weight_decay=0.1)
    _train(optimizer, params, range(3), keep_grads=True)
    (flat,) = _flat_groups(optimizer)
    sizes = [p.numel() for p in params]
    assert flat.flat_param.numel() == sum(sizes)
    offset = 0
    for p, size in zip(params, sizes, strict=True):
        assert p.data_ptr() == flat.flat_param.data_ptr() + offset * 4
        assert p.grad is not None and p.grad.data_ptr() == flat.flat_grad.data_ptr() + offset * 4
        state = optimizer.state[p]
        for key, buffer in zip(("exp_avg", "exp_avg_sq", "exp_avg_ipt"), flat.flat_state,
                               strict=True):
            assert state[key].data_ptr() == buffer.data_ptr() + offset * 4
            assert state[key].shape == p.shape
        assert state["step"].item() == 3
        offset += size


# make_params' sizes are 35, 5, 24, 1, 144 and 24: with 30 as the limit, each of the two
# groups the tests below use has large and small tensors.
MIXED_LIMIT = 30


@pytest.fixture(params=["all small", "mixed"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """With the default limit every test tensor is small; "mixed" gives each group large
    tensors (a kernel call each when gradients are new) after small ones."""
    if request.param == "mixed":
        monkeypatch.setattr(flat_module, "FRESH_OWN_CALL_MIN_NUMEL", MIXED_LIMIT)
    return str(request.param)


def test_new_gradient_tensors_every_step_are_read_where_they_are(
    monkeypatch: pytest.MonkeyPatch,
):
    """Copied in once; when new ones come again, the large ones are read where they are (a
    kernel call each) and the small ones copied into one buffer (one call); never the
    per-tensor path. Kept ones again: copied in once, then one call per step."""
    monkeypatch.setattr(flat_module, "FRESH_OWN_CALL_MIN_NUMEL", MIXED_LIMIT)
    per_tensor: list[int] = []
    real = compiled_module._compiled_sage

    def spy(params: list[Tensor], *args: object, **kwargs: object) -> None:
        per_tensor.append(len(params))
        real(params, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compiled_module, "_compiled_sage", spy)
    calls: list[list[tuple[int, int]]] = []  # per step: (numel, grad address) of each call
    real_kernel = compiled_module._kernel

    def counting_kernel(base: str, sage: bool) -> object:
        kernel = real_kernel(base, sage)

        def run(p: Tensor, g: Tensor, *rest: Tensor) -> None:
            calls[-1].append((p.numel(), g.data_ptr()))
            kernel(p, g, *rest)
        return run

    monkeypatch.setattr(compiled_module, "_kernel", counting_kernel)
    params = make_params()
    optimizer = SAGE(params, compiled=True, weight_decay=0.1)
    grads_read: list[list[int]] = []  # per step: the addresses of the large gradients
    for step in range(4):
        calls.append([])
        _train(optimizer, params, range(step, step + 1))
        grads_read.append([params[i].grad.data_ptr() for i in (0, 4)])  # type: ignore[union-attr]
    assert per_tensor == []
    (flat,) = _flat_groups(optimizer)
    sizes = [p.numel() for p in params]
    large = [i for i, n in enumerate(sizes) if n >= MIXED_LIMIT]
    small = [i for i, n in enumerate(sizes) if n < MIXED_LIMIT]
    assert large == [0, 4] and small == [1, 2, 3, 5]
    # the layout: small tensors first, then large, each in group order
    offset = 0
    for i in small + large:
        assert params[i].data_ptr() == flat.flat_param.data_ptr() + offset * 4
        offset += sizes[i]
    assert [n for n, _ in calls[0]] == [sum(sizes)]  # step 1: copied in, one call
    small_numel = sum(sizes[i] for i in small)
    assert flat.small_grad is not None
    for step_calls, addresses in zip(calls[1:], grads_read[1:], strict=True):
        assert step_calls == [(small_numel, flat.small_grad.data_ptr()),
                              (sizes[0], addresses[0]), (sizes[4], addresses[1])]
    assert flat.flat_grad is None  # not used while new gradients come: freed
    # the same foreign gradients as on the last step: copied in at once, then held
    calls.append([])
    _train(optimizer, params, range(4, 7), keep_grads=True)
    assert per_tensor == []
    assert flat.flat_grad is not None
    assert [n for n, _ in calls[-1]] == [sum(sizes)] * 3
    assert params[0].grad.data_ptr() == flat.flat_grad.data_ptr() + small_numel * 4


@pytest.mark.parametrize("base", ["adamw", "adamax"])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_fresh_and_kept_gradients_give_the_same_steps(base: str, set_to_none: bool, layout: str):
    """Autograd's new gradients are copied in; kept ones are accumulated into in place."""
    results = []
    for options in (dict(foreach=False), dict(compiled=True)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))  # 128, 16, 32, 2
        optimizer = SAGE(model.parameters(), lr=0.01, weight_decay=0.1, base=base, **options)
        for step in range(8):
            x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
            model(x).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=set_to_none)
        results.append([p.detach().clone() for p in model.parameters()])
    for r, g in zip(*results, strict=True):
        torch.testing.assert_close(g, r, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("base", ["adamw", "adamax"])
@pytest.mark.parametrize("into", ["fresh optimizer", "same optimizer"])
@pytest.mark.parametrize("keep_grads", [False, True])
def test_state_dict_round_trip_continues_bit_identically(
    base: str, into: str, keep_grads: bool, tmp_path: Path, layout: str
):
    def groups(ps: list[Tensor]) -> list[dict]:
        return [{"params": ps[:3]}, {"params": ps[3:], "sage": False, "lr": 0.02}]

    params = make_params()
    optimizer = SAGE(groups(params), lr=0.05, base=base, weight_decay=0.1, compiled=True)
    _train(optimizer, params, range(5), keep_grads=keep_grads)
    assert len(_flat_groups(optimizer)) == 2
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    saved = [p.detach().clone() for p in params]
    _train(optimizer, params, range(5, 12), keep_grads=keep_grads)
    expected = [p.detach().clone() for p in params]
    expected_state = {i: dict(optimizer.state[p]) for i, p in enumerate(params)}

    if into == "fresh optimizer":
        resumed = [p.clone().requires_grad_() for p in saved]
        other = SAGE(groups(resumed), lr=0.05, base=base, weight_decay=0.1, compiled=True)
    else:  # rewind the same params and optimizer (the params stay in their flat buffers)
        resumed, other = params, optimizer
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    other.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    _train(other, resumed, range(5, 12), keep_grads=keep_grads)
    assert len(_flat_groups(other)) == 2
    for a, b in zip(expected, resumed, strict=True):
        assert torch.equal(a, b)
    for i, p in enumerate(resumed):
        for key, value in expected_state[i].items():
            assert torch.equal(value, other.state[p][key]), key


def test_a_missing_gradient_sends_the_group_back_to_the_per_tensor_path():
    results = []
    for options in (dict(foreach=False), dict(compiled=True)):
        params = make_params()
        optimizer = SAGE(params, weight_decay=0.1, **options)
        for step in range(8):
            for index, (p, g) in enumerate(zip(params, make_grads(params, step), strict=True)):
                p.grad = None if (step == 3 and index == 1) else g
            optimizer.step()
        results.append(params)
        if "compiled" in options:
            assert not _flat_groups(optimizer)
            assert optimizer.state[params[1]]["step"].item() == 7
            assert optimizer.state[params[0]]["step"].item() == 8
    for r, g in zip(*results, strict=True):
        torch.testing.assert_close(g, r, **TOLERANCES[torch.float32])


def test_views_and_low_precision_params_keep_the_per_tensor_path():
    base = torch.randn(40)
    view = nn.Parameter(base[10:30].view(4, 5))  # shares memory with `base`: not moved
    optimizer = SAGE([view], compiled=True)
    view.grad = torch.randn(4, 5)
    optimizer.step()
    assert not _flat_groups(optimizer)
    assert view.data_ptr() == base.data_ptr() + 10 * 4

    params = make_params(torch.bfloat16)
    optimizer = SAGE(params, compiled=True)
    _train(optimizer, params, range(2))
    assert not _flat_groups(optimizer)


def test_a_moved_parameter_rebuilds_the_buffers():
    results = []
    for options in (dict(foreach=False), dict(compiled=True)):
        params = make_params(dtype=torch.float64)
        optimizer = SAGE(params, weight_decay=0.1, **options)
        _train(optimizer, params, range(3))
        params[2].data = params[2].data.clone()  # e.g. a .to() that had to copy
        _train(optimizer, params, range(3, 6))
        results.append(params)
        if "compiled" in options:
            (flat,) = _flat_groups(optimizer)
            assert params[2].data_ptr() == flat.flat_param.data_ptr() + (35 + 5) * 8
    for r, g in zip(*results, strict=True):
        torch.testing.assert_close(g, r, **TOLERANCES[torch.float64])


def test_hugging_face_model_saves_and_loads_after_flat_steps(tmp_path: Path):
    """The params share one storage (without overlapping): save_pretrained must not mind."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    optimizer = SAGE(model.parameters(), compiled=True, lr=0.01)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    optimizer.step()
    assert _flat_groups(optimizer)
    model.save_pretrained(tmp_path)
    loaded = BertForSequenceClassification.from_pretrained(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
