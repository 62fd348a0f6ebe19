"""The torch.compile'd kernels agree with the reference (one call per tensor, per several,
or packed), are the automatic choice for large steps on CPU, compile once per variant, and
are refused or raise, never swapped for another implementation, where they cannot be had.

Tensors are tiny so that each kernel variant compiles in about a second."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sage_testing import make_grads, make_params, run_steps
from test_sage_parity import LRS, STEPS, TOLERANCES

import sage_core.optim.sage as sage_module

pytestmark = pytest.mark.skipif(
    not sage_module.compiled_kernels_available(torch.device("cpu")),
    reason="torch.compile cannot build CPU kernels here (no C++ compiler)",
)


def _assert_matches_reference(dtype: torch.dtype, fast: dict[str, Any], **options: Any) -> None:
    ref, _ = run_steps(STEPS, dtype=dtype, lr_schedule=LRS, foreach=False, **options)
    got, _ = run_steps(STEPS, dtype=dtype, lr_schedule=LRS, **fast, **options)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, **TOLERANCES[dtype])


@pytest.mark.parametrize(
    ("base", "use_sage", "weight_decay", "dtype"),
    [
        ("adamw", True, 0.1, torch.float32),
        ("adamw", True, 0.0, torch.float32),
        ("adamw", False, 0.1, torch.float32),
        ("adamax", True, 0.1, torch.float32),
        ("adamax", True, 0.0, torch.float32),
        ("adamax", False, 0.1, torch.float32),
        ("adamw", True, 0.1, torch.float64),
        ("adamax", True, 0.1, torch.float64),
        ("adamw", True, 0.1, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("layout", ["packed", "own calls"])
def test_compiled_matches_reference(
    base: str, use_sage: bool, weight_decay: float, dtype: torch.dtype, layout: str,
    monkeypatch: pytest.MonkeyPatch,
):
    """packed: every tensor is packed into one call; own calls: the larger ones get their
    own (the transposed one is not contiguous: foreach, in both)."""
    if layout == "own calls":
        monkeypatch.setattr(sage_module, "OWN_CALL_MIN_NUMEL", 20)
    _assert_matches_reference(
        dtype, dict(compiled=True), base=base, use_sage=use_sage, weight_decay=weight_decay
    )


@pytest.mark.parametrize(("base", "use_sage"), [("adamw", True), ("adamax", False)])
def test_calls_over_several_tensors_match_reference(
    base: str, use_sage: bool, monkeypatch: pytest.MonkeyPatch
):
    """Two tensor sets a call (the four contiguous tensors of 2+ elements: two calls)."""
    monkeypatch.setattr(sage_module, "OWN_CALL_MIN_NUMEL", 2)
    monkeypatch.setattr(sage_module, "KERNEL_ARITY", 2)
    _assert_matches_reference(
        torch.float32, dict(compiled=True), base=base, use_sage=use_sage, weight_decay=0.1
    )
    assert (base, use_sage, 2) in sage_module._COMPILED_KERNELS


def test_params_at_different_steps_match_reference(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sage_module, "OWN_CALL_MIN_NUMEL", 20)
    results = []
    for options in (dict(foreach=False), dict(compiled=True)):
        params = make_params()
        optimizer = sage_module.SAGE(params, weight_decay=0.1, **options)
        for step in range(6):
            grads = make_grads(params, step)
            for index, (p, g) in enumerate(zip(params, grads, strict=True)):
                p.grad = g if step >= index else None  # param i joins at step i
            optimizer.step()
        results.append(params)
    for r, g in zip(*results, strict=True):
        torch.testing.assert_close(g, r, **TOLERANCES[torch.float32])


def test_default_for_large_steps_is_compiled_and_matches_reference(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(sage_module, "COMPILE_MIN_NUMEL", 0)
    calls: list[int] = []
    real = sage_module._compiled_sage

    def spy(params: list[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        calls.append(len(params))
        real(params, *args, **kwargs)

    monkeypatch.setattr(sage_module, "_compiled_sage", spy)
    _assert_matches_reference(torch.float32, {}, base="adamw", weight_decay=0.1)
    assert len(calls) == STEPS


def test_the_automatic_choice_counts_the_whole_step(monkeypatch: pytest.MonkeyPatch):
    """A group too small alone takes the compiled kernels when the optimizer's step is large
    enough (its other groups), and foreach when the whole step is small."""
    params = make_params()
    numel = sum(p.numel() for p in params)
    monkeypatch.setattr(sage_module, "COMPILE_MIN_NUMEL", numel)
    chosen: list[object] = []
    real = sage_module._choose_implementation

    def spy(*args: Any, **kwargs: Any) -> Any:
        chosen.append(real(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(sage_module, "_choose_implementation", spy)
    optimizer = sage_module.SAGE([{"params": params[:1]}, {"params": params[1:]}])
    for p, g in zip(params, make_grads(params, 0), strict=True):
        p.grad = g
    optimizer.step()
    assert chosen == [sage_module._compiled_sage] * 2
    params[0].grad = None
    optimizer.step()
    assert chosen[2:] == [sage_module._multi_tensor_sage]  # the first group had no grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_step_and_zero_params_with_compiled_kernel(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sage_module, "OWN_CALL_MIN_NUMEL", 20)
    lr, wd = 0.1, 0.2
    got, _ = run_steps(1, dtype=dtype, compiled=True, lr=lr, weight_decay=wd)
    for p0, p1 in zip(make_params(dtype), got, strict=True):
        assert torch.equal(p1, (p0.detach().float() * (1 - lr * wd)).to(dtype))
    got, _ = run_steps(25, dtype=dtype, compiled=True, lr=lr, weight_decay=wd)
    assert torch.equal(got[0][0, :3], torch.zeros(3, dtype=dtype))


def test_no_recompilation_across_lr_steps_and_sizes():
    run_steps(2, compiled=True, base="adamw")  # warm: compiled here or in an earlier test
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    run_steps(STEPS, compiled=True, base="adamw", lr_schedule=LRS)
    params = [torch.randn(n, requires_grad=True) for n in (3, 5000, 77, 4096 * 3)]
    optimizer = sage_module.SAGE(params, compiled=True, weight_decay=0.3, beta3=0.6)
    for step in range(3):
        optimizer.param_groups[0]["lr"] = 1e-3 * (step + 1)
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before


def test_compile_failure_raises_and_writes_nothing(monkeypatch: pytest.MonkeyPatch):
    def broken(*args: Any) -> None:
        raise RuntimeError("no compiler")

    monkeypatch.setattr(sage_module, "_compiled_kernel", lambda base, use_sage, arity=1: broken)
    params = make_params()
    before = [p.detach().clone() for p in params]
    optimizer = sage_module.SAGE(params, compiled=True, weight_decay=0.1)
    for p, g in zip(params, make_grads(params, 0), strict=True):
        p.grad = g
    with pytest.raises(RuntimeError, match="no compiler"):
        optimizer.step()
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)


def test_compiled_is_refused_where_it_cannot_be_built(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sage_module, "compiled_kernels_available", lambda device: False)
    with pytest.raises(ValueError, match=r"Invalid compiled: True \(torch.compile cannot"):
        sage_module.SAGE(make_params(), compiled=True)
    params = make_params()
    with pytest.raises(ValueError, match="Invalid compiled: True"):
        sage_module.SAGE([{"params": params[:2]}, {"params": params[2:], "compiled": True}])
    # the automatic choice does not ask for them there: foreach
    big = [torch.zeros(sage_module.COMPILE_MIN_NUMEL)]
    choose = sage_module._choose_implementation
    assert choose(big, foreach=None, compiled=None) is sage_module._multi_tensor_sage


def test_the_choice():
    choose = sage_module._choose_implementation
    small = [torch.zeros(10)]
    big = [torch.zeros(sage_module.COMPILE_MIN_NUMEL)]
    for params in (small, big):
        assert choose(params, foreach=False, compiled=None) is sage_module._single_tensor_sage
        assert choose(params, foreach=False, compiled=False) is sage_module._single_tensor_sage
        assert choose(params, foreach=True, compiled=None) is sage_module._multi_tensor_sage
        assert choose(params, foreach=None, compiled=False) is sage_module._multi_tensor_sage
        assert choose(params, foreach=None, compiled=True) is sage_module._compiled_sage
        with pytest.raises(ValueError, match="Conflicting options: compiled=True and foreach"):
            choose(params, foreach=True, compiled=True)
    # automatic: too small to repay a compilation; large on CPU; other devices (CUDA too)
    assert choose(small, foreach=None, compiled=None) is sage_module._multi_tensor_sage
    assert choose(big, foreach=None, compiled=None) is sage_module._compiled_sage
    # the size is the whole optimizer step's: a small group of a large model too
    assert choose(
        small, foreach=None, compiled=None, step_numel=sage_module.COMPILE_MIN_NUMEL
    ) is sage_module._compiled_sage
    assert choose(big, foreach=None, compiled=None, step_numel=10) is sage_module._multi_tensor_sage
    meta = [torch.empty(sage_module.COMPILE_MIN_NUMEL, device="meta")]
    assert choose(meta, foreach=None, compiled=None) is sage_module._multi_tensor_sage


def test_will_compile_follows_the_choice(monkeypatch: pytest.MonkeyPatch):
    """The trainer's "Compiling the optimizer's kernels" event asks SAGE.will_compile,
    which makes step's choice without building anything."""
    monkeypatch.setattr(sage_module, "compiled_kernels_available", lambda device: True)
    big = torch.nn.Parameter(torch.zeros(sage_module.COMPILE_MIN_NUMEL))
    small = torch.nn.Parameter(torch.zeros(10))
    assert sage_module.SAGE([big, small]).will_compile()
    assert not sage_module.SAGE([small]).will_compile()
    assert not sage_module.SAGE([big], compiled=False).will_compile()
    assert sage_module.SAGE([small], compiled=True).will_compile()
    monkeypatch.setattr(sage_module, "compiled_kernels_available", lambda device: False)
    assert not sage_module.SAGE([big]).will_compile()
