"""The fast implementations agree with the single-tensor reference over many steps."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sage_testing import run_steps

STEPS = 20
LRS = [0.02 * (1 + (s % 5)) / 5 for s in range(STEPS)]  # lr changes every step

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: dict(rtol=1e-12, atol=1e-13),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    # bf16 params: fp32 math on both sides, one bf16 rounding of the result
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}


def _compare(dtype: torch.dtype, fast: dict[str, Any], **options: Any) -> None:
    ref, ref_opt = run_steps(
        STEPS, dtype=dtype, lr_schedule=LRS, foreach=False, **options
    )
    got, got_opt = run_steps(STEPS, dtype=dtype, lr_schedule=LRS, **fast, **options)
    tol = TOLERANCES[dtype]
    for r, g in zip(ref, got, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g, r, **tol)
    for p_ref, p_got in zip(ref_opt.state, got_opt.state, strict=True):
        s_ref, s_got = ref_opt.state[p_ref], got_opt.state[p_got]
        assert set(s_ref) == set(s_got)
        for key in s_ref:
            state_tol = tol if dtype != torch.bfloat16 else TOLERANCES[torch.float32]
            if key == "exp_avg_ipt" and dtype == torch.bfloat16:
                state_tol = dict(rtol=2e-2, atol=1e-2)  # I uses the bf16-rounded p
            torch.testing.assert_close(s_got[key], s_ref[key], **state_tol)


@pytest.mark.parametrize("base", ["adamw", "adamax"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("use_sage", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_tensor_matches_reference(
    base: str, weight_decay: float, use_sage: bool, dtype: torch.dtype
):
    _compare(dtype, dict(foreach=True), base=base, weight_decay=weight_decay,
             use_sage=use_sage)


@pytest.mark.parametrize("base", ["adamw", "adamax"])
def test_default_implementation_matches_reference(base: str):
    """foreach=None, compiled=None: whatever the dispatcher picks for small tensors."""
    _compare(torch.float32, {}, base=base, weight_decay=0.1)


@pytest.mark.parametrize("base", ["adamw", "adamax"])
def test_bf16_params_match_reference(base: str):
    _compare(torch.bfloat16, dict(foreach=True), base=base, weight_decay=0.1)
