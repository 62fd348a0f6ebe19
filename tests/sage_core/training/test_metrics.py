"""The numpy metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sage_core.training import metrics as M


def test_accuracy() -> None:
    assert M.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75


def test_f1_macro_three_classes() -> None:
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8;
    # class 2: tp 1, fp 0, fn 1 -> 2/3
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    assert M.f1_macro(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_f1_macro_counts_classes_only_predicted() -> None:
    # class 1 never occurs but is predicted once: its F1 is 0 and it is averaged in.
    assert M.f1_macro([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0.0) / 2)


def test_mcc_multiclass_formula() -> None:
    # t = [2, 2, 2], p = [2, 3, 1], c = 4, s = 6:
    # (4*6 - (4 + 6 + 2)) / sqrt((36 - 14) * (36 - 12)) = 12 / sqrt(528)
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    assert M.matthews_corrcoef(y_true, y_pred) == pytest.approx(12 / math.sqrt(528))


def test_mcc_binary_matches_the_textbook_formula() -> None:
    y_true = [1, 1, 1, 0, 0, 0, 0, 1]
    y_pred = [1, 0, 1, 0, 0, 1, 0, 1]
    tp, tn, fp, fn = 3, 3, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.matthews_corrcoef(y_true, y_pred) == pytest.approx(expected)
    assert M.matthews_corrcoef(y_true, y_true) == pytest.approx(1.0)
    assert M.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_degenerate_metrics_are_zero_not_nan() -> None:
    assert M.matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0
    assert M.pearson([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0
    assert M.spearman([1.0, 1.0], [2.0, 3.0]) == 0.0


def test_rank_average_gives_ties_their_mean_rank() -> None:
    np.testing.assert_array_equal(M.rank_average([10, 20, 20, 20, 5]), [2, 4, 4, 4, 1])
    np.testing.assert_array_equal(M.rank_average([3, 1, 3]), [2.5, 1, 2.5])


def test_spearman_with_ties() -> None:
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: centred dot 4.5, norms^2 4.5 and 5
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_pearson() -> None:
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # centred x = [-1, 0, 1], y = [-1, -1, 2] (mean 2): dot 3, norms^2 2 and 6
    assert M.pearson([1, 2, 3], [1, 1, 4]) == pytest.approx(3 / math.sqrt(12))
    # monotone but not linear: Spearman is 1, Pearson is not
    assert M.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
