"""A sweep's comparisons with their noise: a pure function over the children's results.

- Per (optimizer, learning rate): the mean and sample standard deviation, over its seeds,
  of each child's last validation main metric (children without one, e.g. failed, are left
  out and `n` says how many seeds count). An optimizer's best learning rate is the best
  mean (ties to the earlier in the grid).
- Per compare_to optimizer: the job's own optimizer (a) against it (b), each at its best
  learning rate, paired by seed: d = a - b per shared seed, its mean, and a 95% t-interval
  (t quantile for n - 1 degrees of freedom; the normal 1.96 past 30). The verdict claims
  only what the interval shows: "no difference shown" when it contains 0, else
  "<a or b> ahead by |mean| ± half-width" in the metric's units. With one shared seed
  there is no interval, and the verdict says so (and claims no difference).
- Warnings: `best_at_grid_edge` (an optimizer's best rate is the lowest or highest of a
  grid of two or more; the next grid extends past that edge by the grid's own ratio),
  `validation_too_small` (the validation file has under 100 rows, where one row moves an
  accuracy-like metric by over 1%; or, for an accuracy-like metric, a comparison's
  difference is smaller than one row's worth, 1/n), `run_collapsed` (a child that failed,
  or whose own warnings say it predicts one class, is no better than the trivial baseline,
  or its loss diverged).

The interval is over seeds only, on one validation set, after each side's best rate was
picked on that same set: it leaves out the data's own sampling noise (hence
validation_too_small) and is somewhat optimistic for grids of many rates.

The best single child per optimizer (`best_per_optimizer`, whose model the sweep promotes)
is ranked by `sage_core.db.sweeps.best_of`, not here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from api.schemas import SweepComparison, SweepRate, SweepWarning
from sage_core.db.sweeps import ChildResult

# two-sided 95%: t_{0.975, df} for df = 1..30
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z_975 = 1.96
SMALL_VALIDATION = 100  # rows
ACCURACY_LIKE = ("valid_accuracy", "valid_f1_macro")  # in [0, 1], one row moves it ~1/n
COLLAPSE_CODES = ("predicts_one_class", "no_better_than_baseline", "loss_diverged")


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be at least 1")
    return T_975[df - 1] if df <= len(T_975) else Z_975


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _rounded(value: float) -> float:
    return float(f"{value:.6g}")


def _better(x: float, y: float, greater: bool) -> bool:
    return x > y if greater else x < y


def rates(children: Sequence[ChildResult], *, greater_is_better: bool) -> list[SweepRate]:
    """Every (optimizer, learning rate) in grid order, with the best of each marked."""
    groups: dict[tuple[str, float], list[ChildResult]] = {}
    for child in children:
        groups.setdefault((child.optimizer, child.learning_rate), []).append(child)
    out = []
    for (optimizer, lr), members in groups.items():
        scored = [c for c in members if c.score is not None]
        mean, std = _mean_std([c.score for c in scored if c.score is not None])
        out.append(SweepRate(optimizer=optimizer, learning_rate=lr,
                             seeds=[c.seed for c in scored], n=len(scored), mean=mean, std=std,
                             best=False))
    for optimizer in dict.fromkeys(r.optimizer for r in out):
        best: SweepRate | None = None
        for rate in (r for r in out if r.optimizer == optimizer and r.mean is not None):
            if best is None or _better(rate.mean, best.mean, greater_is_better):  # type: ignore[arg-type]
                best = rate
        if best is not None:
            best.best = True
    return out


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def compare(children: Sequence[ChildResult], table: Sequence[SweepRate], a: str, b: str, *,
            greater_is_better: bool) -> SweepComparison:
    """`a` against `b`, each at its best learning rate, paired by seed."""
    best = {r.optimizer: r for r in table if r.best}
    ra, rb = best.get(a), best.get(b)
    none = SweepComparison(a=a, b=b, a_learning_rate=ra.learning_rate if ra else None,
                           b_learning_rate=rb.learning_rate if rb else None, seeds=[],
                           difference=None, half_width=None, low=None, high=None,
                           verdict="not compared: no seed where both have a score")
    if ra is None or rb is None:
        return none

    def scores(side: SweepRate) -> dict[int | None, float]:
        return {c.seed: c.score for c in children if c.optimizer == side.optimizer
                and c.learning_rate == side.learning_rate and c.score is not None}

    sa, sb = scores(ra), scores(rb)
    seeds = [s for s in sa if s in sb]
    if not seeds:
        return none
    diffs = [sa[s] - sb[s] for s in seeds]
    mean, std = _mean_std(diffs)
    assert mean is not None
    if std is None:
        return none.model_copy(update={
            "seeds": seeds, "difference": mean,
            "verdict": f"no difference shown: one seed, so no interval ({a} - {b} = "
                       f"{_fmt(mean)} on that seed; give sweep.seeds, e.g. [1, 2, 3])"})
    half = t_quantile(len(diffs) - 1) * std / math.sqrt(len(diffs))
    low, high = mean - half, mean + half
    if low <= 0 <= high:
        verdict = "no difference shown"
    else:
        ahead = a if (mean > 0) == greater_is_better else b
        verdict = f"{ahead} ahead by {_fmt(abs(mean))} ± {_fmt(half)}"
    return SweepComparison(a=a, b=b, a_learning_rate=ra.learning_rate,
                           b_learning_rate=rb.learning_rate, seeds=seeds, difference=mean,
                           half_width=half, low=low, high=high, verdict=verdict)


def _edge_warning(optimizer: str, grid: list[float], best: float) -> SweepWarning | None:
    grid = sorted(grid)
    if len(grid) < 2 or best not in (grid[0], grid[-1]):
        return None
    if best == grid[-1]:
        ratio, side = grid[-1] / grid[-2], "highest"
        nxt = [best * ratio ** k for k in (0, 1, 2)]
        nxt = [x for x in nxt if x <= 1]
    else:
        ratio, side = grid[0] / grid[1], "lowest"
        nxt = [best * ratio ** k for k in (2, 1, 0)]
    suggested = [_rounded(x) for x in nxt]
    return SweepWarning(
        code="best_at_grid_edge", optimizer=optimizer, suggested_grid=suggested,
        message=f"{optimizer}'s best learning rate {best:g} is the {side} of its grid: a "
                f"better one may lie beyond it; try {', '.join(f'{x:g}' for x in suggested)}")


def analyse(children: Sequence[ChildResult], *, own: str, others: Sequence[str], metric: str,
            greater_is_better: bool, validation_rows: int | None,
            ) -> tuple[list[SweepRate], list[SweepComparison], list[SweepWarning]]:
    """The rate table, each comparison of `own` with one of `others`, and the warnings."""
    table = rates(children, greater_is_better=greater_is_better)
    comparisons = [compare(children, table, own, other, greater_is_better=greater_is_better)
                   for other in others]
    warnings: list[SweepWarning] = []
    for rate in table:
        if rate.best:
            grid = [r.learning_rate for r in table if r.optimizer == rate.optimizer]
            edge = _edge_warning(rate.optimizer, grid, rate.learning_rate)
            if edge is not None:
                warnings.append(edge)
    if validation_rows is not None:
        row = 1 / validation_rows if validation_rows > 0 else math.inf
        if validation_rows < SMALL_VALIDATION:
            warnings.append(SweepWarning(
                code="validation_too_small",
                message=f"the validation file has {validation_rows} rows (under "
                        f"{SMALL_VALIDATION}): one row moves an accuracy-like metric by "
                        f"{row:.3g}, so runs this close cannot be told apart; use a larger "
                        "validation set and more seeds"))
        elif metric in ACCURACY_LIKE:
            close = [c for c in comparisons if c.difference is not None
                     and abs(c.difference) < row]
            for c in close:
                warnings.append(SweepWarning(
                    code="validation_too_small", optimizer=c.b,
                    message=f"{c.a} - {c.b} = {_fmt(c.difference or 0.0)} is less than one "
                            f"of the {validation_rows} validation rows ({row:.3g})"))
    for child in children:
        why = [w for w in child.warnings if w in COLLAPSE_CODES]
        if child.status == "failed":
            why.insert(0, "failed")
        if why:
            warnings.append(SweepWarning(
                code="run_collapsed", optimizer=child.optimizer, job_ids=[child.id],
                message=f"{child.id} ({child.optimizer}, learning rate "
                        f"{child.learning_rate:g}, seed {child.seed}) collapsed: "
                        f"{', '.join(why)}"))
    return table, comparisons, warnings
