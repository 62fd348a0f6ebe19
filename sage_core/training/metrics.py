"""Evaluation metrics in plain numpy (no scikit-learn or scipy in the image).

Every function returns a finite float: where a metric is undefined (a constant input, an
empty class), it returns 0.0, as scikit-learn does for MCC, so rows stay valid JSON.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(t == p)) if t.size else 0.0


def _confusion(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """Confusion matrix over the classes present in either array (rows: true, cols: predicted)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    classes, inverse = np.unique(np.concatenate([t, p]), return_inverse=True)
    k = len(classes)
    ti, pi = inverse[: t.size], inverse[t.size:]
    return np.bincount(ti * k + pi, minlength=k * k).reshape(k, k).astype(np.float64)


def f1_macro(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Unweighted mean of per-class F1 over the classes seen in y_true or y_pred."""
    cm = _confusion(y_true, y_pred)
    if cm.size == 0:
        return 0.0
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


def matthews_corrcoef(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Multiclass MCC (Gorodkin's R_K):
    (c*s - sum_k p_k*t_k) / sqrt((s^2 - sum_k p_k^2) * (s^2 - sum_k t_k^2)),
    with c the correct count, s the total, t_k / p_k the true / predicted counts of class k."""
    cm = _confusion(y_true, y_pred)
    if cm.size == 0:
        return 0.0
    t_k, p_k = cm.sum(axis=1), cm.sum(axis=0)
    c, s = np.trace(cm), cm.sum()
    denom = (s * s - p_k @ p_k) * (s * s - t_k @ t_k)
    if denom <= 0:
        return 0.0
    return float((c * s - p_k @ t_k) / np.sqrt(denom))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(np.clip((a @ b) / denom, -1.0, 1.0)) if denom > 0 else 0.0


def rank_average(x: ArrayLike) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    ordinal = np.empty(a.size, dtype=np.float64)
    ordinal[order] = np.arange(1, a.size + 1)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ordinal)
    return sums[inverse] / counts[inverse]


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    return pearson(rank_average(x), rank_average(y))
