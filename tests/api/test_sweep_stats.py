"""A sweep's report on constructed results: means and stds over seeds, the paired
comparison's interval and verdict, and the warnings (api/services/sweep_stats.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from api.services.sweep_stats import analyse, t_quantile
from sage_core.db.sweeps import ChildResult


def _child(optimizer: str, lr: float, seed: int, score: float | None, *,
           status: str = "succeeded", warnings: tuple[str, ...] = ()) -> ChildResult:
    return ChildResult(id=f"{optimizer}-{lr:g}-{seed}", optimizer=optimizer, learning_rate=lr,
                       status=status, fine_tuned_model=None, metrics={}, score=score,
                       seed=seed, warnings=warnings)


def _grid(scores: dict[tuple[str, float], list[float]]) -> list[ChildResult]:
    return [_child(o, lr, seed, s) for (o, lr), values in scores.items()
            for seed, s in enumerate(values, start=1)]


def _analyse(children: list[ChildResult], rows: int | None = 1000, **kw: Any) -> Any:
    kw.setdefault("metric", "valid_f1_macro")
    kw.setdefault("greater_is_better", True)
    return analyse(children, own="sage", others=["adamw"], validation_rows=rows, **kw)


def test_means_stds_and_the_best_rate_by_mean() -> None:
    children = _grid({("sage", 1e-4): [0.80, 0.90, 0.70], ("sage", 3e-4): [0.85, 0.86, 0.84],
                      ("sage", 9e-4): [0.60, 0.61, 0.62],
                      ("adamw", 5e-5): [0.70, 0.72, 0.74], ("adamw", 1.5e-4): [0.5, 0.5, 0.5]})
    table, _, _ = _analyse(children)
    first = table[0]
    assert (first.optimizer, first.learning_rate, first.n, first.seeds) == (
        "sage", 1e-4, 3, [1, 2, 3])
    assert first.mean == pytest.approx(0.80) and first.std == pytest.approx(0.10)
    assert [(r.optimizer, r.learning_rate) for r in table if r.best] == [
        ("sage", 3e-4), ("adamw", 5e-5)]


def test_a_difference_the_interval_shows() -> None:
    # paired differences 0.10, 0.12, 0.14: mean 0.12, sd 0.02, h = 4.303 * 0.02 / sqrt(3)
    children = _grid({("sage", 1e-4): [0.90, 0.92, 0.94], ("sage", 3e-4): [0.5, 0.5, 0.5],
                      ("adamw", 5e-5): [0.80, 0.80, 0.80]})
    _, [comparison], _ = _analyse(children)
    half = 4.303 * 0.02 / math.sqrt(3)
    assert comparison.seeds == [1, 2, 3]
    assert comparison.difference == pytest.approx(0.12)
    assert comparison.half_width == pytest.approx(half)
    assert comparison.low == pytest.approx(0.12 - half)
    assert comparison.verdict == f"sage ahead by 0.12 ± {half:.3g}"


def test_no_difference_shown_when_the_interval_holds_zero() -> None:
    # the winner by mean changes with the seed: differences 0.14, -0.10, 0.05
    children = _grid({("sage", 1e-4): [0.94, 0.70, 0.85], ("sage", 3e-4): [0.1, 0.1, 0.1],
                      ("adamw", 5e-5): [0.80, 0.80, 0.80]})
    _, [comparison], _ = _analyse(children)
    assert comparison.low is not None and comparison.high is not None
    assert comparison.low < 0 < comparison.high
    assert comparison.verdict == "no difference shown"


def test_lower_is_better_names_the_lower_loss() -> None:
    children = _grid({("sage", 1e-4): [0.30, 0.31, 0.32], ("sage", 3e-4): [0.9, 0.9, 0.9],
                      ("adamw", 5e-5): [0.50, 0.50, 0.50]})
    _, [comparison], _ = _analyse(children, metric="valid_loss", greater_is_better=False)
    assert comparison.difference == pytest.approx(-0.19)
    assert comparison.verdict.startswith("sage ahead by 0.19 ± ")


def test_one_seed_gives_no_interval_and_claims_nothing() -> None:
    """The incident: one seed, 64 validation rows, both winners at the top of their grids,
    two of four runs collapsed to one class."""
    children = [_child("sage", 1.5e-4, 1, 0.40, warnings=("predicts_one_class",)),
                _child("sage", 4.5e-4, 1, 0.933),
                _child("adamw", 5e-5, 1, 0.40, warnings=("predicts_one_class",)),
                _child("adamw", 1.5e-4, 1, 0.795)]
    table, [comparison], warnings = _analyse(children, rows=64)
    assert all(r.std is None and r.n == 1 for r in table)
    assert comparison.half_width is None and comparison.low is None
    assert comparison.difference == pytest.approx(0.138)
    assert comparison.verdict.startswith("no difference shown: one seed, so no interval")
    assert [(w.code, w.optimizer) for w in warnings] == [
        ("best_at_grid_edge", "sage"), ("best_at_grid_edge", "adamw"),
        ("validation_too_small", None), ("run_collapsed", "sage"), ("run_collapsed", "adamw")]
    assert "64 rows" in warnings[2].message


def test_the_best_rate_at_a_grid_edge_suggests_the_next_grid() -> None:
    # sage's best is its highest rate, adamw's its lowest; the incident's grids
    children = _grid({("sage", 1.5e-4): [0.80], ("sage", 4.5e-4): [0.93],
                      ("adamw", 5e-5): [0.79], ("adamw", 1.5e-4): [0.70]})
    _, _, warnings = _analyse(children)
    edges = {w.optimizer: w for w in warnings if w.code == "best_at_grid_edge"}
    assert edges["sage"].suggested_grid == [4.5e-4, 1.35e-3, 4.05e-3]
    assert "highest" in edges["sage"].message
    assert edges["adamw"].suggested_grid == [5.55556e-06, 1.66667e-05, 5e-05]
    assert "lowest" in edges["adamw"].message


def test_an_inner_best_or_a_single_rate_is_not_at_an_edge() -> None:
    children = _grid({("sage", 1e-4): [0.5], ("sage", 3e-4): [0.9], ("sage", 9e-4): [0.6],
                      ("adamw", 5e-5): [0.7]})
    _, _, warnings = _analyse(children)
    assert [w.code for w in warnings] == []


def test_collapsed_and_failed_runs_are_named() -> None:
    children = [_child("sage", 1e-4, 1, 0.9),
                _child("sage", 1e-4, 2, 0.33, warnings=("predicts_one_class",)),
                _child("adamw", 5e-5, 1, 0.4, warnings=("no_better_than_baseline",)),
                _child("adamw", 5e-5, 2, None, status="failed")]
    table, [comparison], warnings = _analyse(children)
    collapsed = [w for w in warnings if w.code == "run_collapsed"]
    assert [w.job_ids for w in collapsed] == [["sage-0.0001-2"], ["adamw-5e-05-1"],
                                             ["adamw-5e-05-2"]]
    assert "predicts_one_class" in collapsed[0].message
    assert "failed" in collapsed[2].message
    assert table[1].n == 1 and table[1].seeds == [1]  # the failed seed has no score
    assert comparison.seeds == [1]


def test_a_difference_under_one_validation_row() -> None:
    children = _grid({("sage", 1e-4): [0.9020, 0.9021, 0.9022], ("adamw", 5e-5): [0.9] * 3})
    _, [comparison], warnings = _analyse(children, rows=200)
    assert comparison.verdict.startswith("sage ahead by 0.0021 ± ")
    assert [w.code for w in warnings] == ["validation_too_small"]
    assert "0.005" in warnings[0].message


def test_no_side_with_a_score_is_not_compared() -> None:
    children = [_child("sage", 1e-4, 1, 0.9), _child("adamw", 5e-5, 1, None, status="queued")]
    _, [comparison], _ = _analyse(children)
    assert comparison.verdict.startswith("not compared")


def test_t_quantiles() -> None:
    assert t_quantile(1) == 12.706 and t_quantile(4) == 2.776 and t_quantile(30) == 2.042
    assert t_quantile(31) == 1.96
    with pytest.raises(ValueError):
        t_quantile(0)
