"""The torch.compile'd kernels: agree with the reference (over flat buffers, one call per
tensor, or packed), are chosen by default for large steps, compile once per variant, and
fall back to foreach when compiling fails.

Tensors are tiny so that each kernel variant compiles in about a second. Tests of the
per-tensor calls switch the flat layout off; test_sage_flat covers the rest of it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sage_testing import make_grads, make_params, run_steps
from test_sage_parity import LRS, STEPS, TOLERANCES

import sage_core.optim.compiled as compiled_module
import sage_core.optim.flat as flat_module
import sage_core.optim.sage as sage_module

pytestmark = pytest.mark.skipif(
    not compiled_module.compiled_kernels_available(torch.device("cpu")),
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
@pytest.mark.parametrize("layout", ["flat", "packed", "own calls"])
def test_compiled_matches_reference(
    base: str, use_sage: bool, weight_decay: float, dtype: torch.dtype, layout: str,
    monkeypatch: pytest.MonkeyPatch,
):
    """flat: one call over the group's buffers (not for bf16, which keeps per-tensor calls);
    packed: every tensor is packed into one call; own calls: the larger ones get their own."""
    if layout != "flat":
        monkeypatch.setattr(flat_module, "FLAT_DEVICE_TYPES", frozenset())
    own_call_min_numel = 20 if layout == "own calls" else 4096
    monkeypatch.setitem(compiled_module.OWN_CALL_MIN_NUMEL, "cpu", own_call_min_numel)
    _assert_matches_reference(
        dtype, dict(compiled=True), base=base, sage=use_sage, weight_decay=weight_decay
    )


def test_params_at_different_steps_match_reference(monkeypatch: pytest.MonkeyPatch):
    """Also for the flat layout, which never forms for a group whose steps differ."""
    monkeypatch.setitem(compiled_module.OWN_CALL_MIN_NUMEL, "cpu", 20)
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


@pytest.mark.parametrize("layout", ["flat", "per tensor"])
def test_default_for_large_steps_is_compiled_and_matches_reference(
    layout: str, monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(sage_module, "COMPILE_MIN_NUMEL", 0)
    if layout == "per tensor":
        monkeypatch.setattr(flat_module, "FLAT_DEVICE_TYPES", frozenset())
    calls: list[int] = []
    real = compiled_module._compiled_sage

    def spy(params: list[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        calls.append(len(params))
        real(params, *args, **kwargs)

    def flat_spy(name: str) -> Any:
        real_flat = getattr(flat_module.FlatGroup, name)

        def run(self: flat_module.FlatGroup, **kwargs: Any) -> bool | None:
            calls.append(len(self.params))
            return real_flat(self, **kwargs)
        return run

    monkeypatch.setattr(compiled_module, "_compiled_sage", spy)
    for name in ("step", "step_new_grads"):  # held gradients, new ones
        monkeypatch.setattr(flat_module.FlatGroup, name, flat_spy(name))
    _assert_matches_reference(torch.float32, {}, base="adamw", weight_decay=0.1)
    assert len(calls) == STEPS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["flat", "per tensor"])
def test_first_step_and_zero_params_with_compiled_kernel(
    dtype: torch.dtype, layout: str, monkeypatch: pytest.MonkeyPatch
):
    if layout == "per tensor":
        monkeypatch.setattr(flat_module, "FLAT_DEVICE_TYPES", frozenset())
    monkeypatch.setitem(compiled_module.OWN_CALL_MIN_NUMEL, "cpu", 20)
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


@pytest.mark.parametrize("layout", ["flat", "per tensor"])
def test_compile_failure_falls_back_to_foreach(
    layout: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    if layout == "per tensor":
        monkeypatch.setattr(flat_module, "FLAT_DEVICE_TYPES", frozenset())
    def broken(*args: Any) -> None:
        raise RuntimeError("no compiler")

    monkeypatch.setattr(compiled_module, "_kernel", lambda base, sage: broken)
    monkeypatch.setattr(compiled_module, "_WARM", set())
    monkeypatch.setattr(compiled_module, "_BROKEN", set())
    ref, _ = run_steps(5, foreach=True, weight_decay=0.1)
    got, _ = run_steps(5, compiled=True, weight_decay=0.1)
    for r, g in zip(ref, got, strict=True):
        assert torch.equal(r, g)
    assert "using the foreach implementation" in caplog.text
    assert compiled_module._BROKEN  # not retried on the next step


def test_automatic_choice(monkeypatch: pytest.MonkeyPatch):
    small = [torch.zeros(10)]
    assert not sage_module._use_compiled(small, None)  # too small to repay a compilation
    assert sage_module._use_compiled(small, True)
    assert not sage_module._use_compiled([torch.zeros(4 << 20)], False)
    assert sage_module._use_compiled([torch.zeros(4 << 20)], None)
    monkeypatch.setattr(sage_module, "COMPILE_MIN_NUMEL", 0)
    # other devices (CUDA included) default to foreach
    assert not sage_module._use_compiled([torch.empty(4 << 20, device="meta")], None)
