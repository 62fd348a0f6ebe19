"""Sweeps and A/B comparisons: one request, a parent job and one ordinary child job per
(optimizer, learning rate, seed); and the parent's report.

The grid: the job's own optimizer (hyperparameters.optimizer) runs over sweep.learning_rate
if given, else over hyperparameters.learning_rate if given, else over its default grid;
each optimizer in compare_to runs over the learning rates given with it, else its default
grid. A default grid is the optimizer's default learning rate (times
learning_rate_multiplier, if given) times 1/3, 1 and 3. Every (optimizer, learning rate)
runs once per seed in sweep.seeds (1 to 5; not with `seed`), else once with the job's
seed; a sweep of seeds alone keeps the learning-rate grid above. At most MAX_CHILDREN
children. Children share everything else: model, task, files, suffix, metadata, schedule
and other hyperparameters.

The parent is `running` from its creation (it is never queued, so no worker or reaper ever
picks it up) and is settled from its children by `sage_core.db.sweeps`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import InvalidRequestError
from api.schemas import (
    CompareToRequest,
    JobCreate,
    JobPublic,
    SweepBest,
    SweepChild,
    SweepReport,
)
from api.services import jobs, sweep_stats
from api.services.files import file_rows
from sage_core.artifacts import ArtifactStore
from sage_core.db import sweeps
from sage_core.db.events import add_event
from sage_core.db.models import ApiKey, File, Job, JobStatus, utcnow
from sage_core.errors import NotFoundError
from sage_core.names import DEFAULT_LEARNING_RATE, OptimizerName, main_metric
from sage_core.schemas import Hyperparameters
from sage_core.settings import Settings

S = JobStatus
MAX_VALUES = 8
MAX_SEEDS = 5
MAX_CHILDREN = 48
DEFAULT_GRID_FACTORS = (1 / 3, 1.0, 3.0)
SWEEPABLE = ("learning_rate", "seeds")


def is_sweep_request(body: JobCreate) -> bool:
    return body.sweep is not None or body.compare_to is not None


def _rounded(value: float) -> float:
    return float(f"{value:.6g}")  # 1.5e-4 / 3 is 5e-05, not 4.9999999999999996e-05


def _check_rates(values: list[float], param: str, *, least: int) -> list[float]:
    if not least <= len(values) <= MAX_VALUES:
        raise InvalidRequestError(f"Invalid value for '{param}': give {least} to {MAX_VALUES} "
                                  f"learning rates, got {len(values)}", param=param,
                                  code="invalid_value")
    for value in values:
        if not 0 < value <= 1:
            raise InvalidRequestError(f"Invalid value for '{param}': each learning rate must "
                                      f"be in (0, 1], got {value}", param=param,
                                      code="invalid_value")
    if len(set(values)) != len(values):
        raise InvalidRequestError(f"Invalid value for '{param}': the learning rates must be "
                                  f"distinct, got {values}", param=param, code="invalid_value")
    return list(values)


def _default_grid(optimizer: OptimizerName, multiplier: float, param: str) -> list[float]:
    grid = [_rounded(DEFAULT_LEARNING_RATE[optimizer] * multiplier * f)
            for f in DEFAULT_GRID_FACTORS]
    if grid[-1] > 1:
        raise InvalidRequestError(
            f"Invalid value for '{param}': {optimizer}'s default learning-rate grid times "
            f"{multiplier:g} reaches {grid[-1]:g}, over 1", param=param, code="invalid_value")
    return grid


def _check_seeds(seeds: list[int], body: JobCreate) -> list[int]:
    param = "sweep.seeds"
    if not 1 <= len(seeds) <= MAX_SEEDS:
        raise InvalidRequestError(f"Invalid value for '{param}': give 1 to {MAX_SEEDS} seeds, "
                                  f"got {len(seeds)}", param=param, code="invalid_value")
    if any(not 0 <= seed <= 2**31 - 1 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise InvalidRequestError(f"Invalid value for '{param}': the seeds must be distinct "
                                  f"and in [0, 2**31 - 1], got {seeds}", param=param,
                                  code="invalid_value")
    if body.seed is not None:
        raise InvalidRequestError("seed cannot be given with sweep.seeds: the sweep sets "
                                  "each child's seed", param="seed", code="invalid_value")
    return list(seeds)


def plan(body: JobCreate, hp: Hyperparameters, seed: int) -> list[tuple[str, float, int]]:
    """The children to run, (optimizer, learning rate, seed) in order, own optimizer first,
    seeds innermost, for a request training with `hp` (its hyperparameters or its method's)
    and, without sweep.seeds, `seed`; a 400 naming the field for anything that cannot be
    honoured."""
    if body.validation_file is None:
        raise InvalidRequestError(
            "A sweep or compare_to needs a validation_file: its child jobs are ranked by "
            "their validation metrics", param="validation_file", code="invalid_value")
    own = hp.optimizer
    multiplier_set = "learning_rate_multiplier" in hp.model_fields_set \
        and hp.learning_rate_multiplier != "auto"
    multiplier = float(hp.learning_rate_multiplier) if multiplier_set else 1.0
    if body.sweep is not None:
        extra = sorted(body.sweep.model_extra or {})
        if extra:
            raise InvalidRequestError(
                f"sweep.{extra[0]} cannot be swept: only learning_rate and seeds can be swept "
                "for now", param=f"sweep.{extra[0]}", code="invalid_value")
        if body.sweep.learning_rate is None and body.sweep.seeds is None:
            raise InvalidRequestError(
                "Missing required parameter: 'sweep.learning_rate' (or 'sweep.seeds').",
                param="sweep.learning_rate", code="invalid_value")
    seeds = [seed] if body.sweep is None or body.sweep.seeds is None \
        else _check_seeds(body.sweep.seeds, body)
    if body.sweep is not None and body.sweep.learning_rate is not None:
        for name, given in (("learning_rate", hp.learning_rate is not None),
                            ("learning_rate_multiplier", multiplier_set)):
            if given:
                raise InvalidRequestError(
                    f"hyperparameters.{name} cannot be given with sweep.learning_rate: the "
                    "sweep sets each child's learning rate", param=f"hyperparameters.{name}",
                    code="invalid_value")
        grids = {own: _check_rates(body.sweep.learning_rate, "sweep.learning_rate", least=2)}
    elif hp.learning_rate is not None:
        grids = {own: [hp.learning_rate]}
    else:
        grids = {own: _default_grid(own, multiplier, "hyperparameters.learning_rate_multiplier")}
    for index, item in enumerate(body.compare_to or []):
        other = item if isinstance(item, CompareToRequest) else CompareToRequest(optimizer=item)
        param = f"compare_to[{index}]"
        if other.optimizer == own:
            raise InvalidRequestError(
                f"Invalid value for '{param}': '{own}' is the job's own optimizer "
                "(hyperparameters.optimizer); compare_to names the others",
                param=param, code="invalid_value")
        if other.optimizer in grids:
            raise InvalidRequestError(f"Invalid value for '{param}': '{other.optimizer}' "
                                      "is named twice", param=param, code="invalid_value")
        grids[other.optimizer] = (
            _check_rates(other.learning_rate, f"{param}.learning_rate", least=1)
            if other.learning_rate is not None
            else _default_grid(other.optimizer, multiplier,
                               "hyperparameters.learning_rate_multiplier"))
    runs: list[tuple[str, float, int]] = [
        (optimizer, lr, s) for optimizer, grid in grids.items() for lr in grid
        for s in seeds]
    if len(runs) > MAX_CHILDREN:
        raise InvalidRequestError(
            f"Invalid value for 'sweep': {len(runs)} child jobs ({len(grids)} optimizers, "
            f"{sum(map(len, grids.values()))} learning rates in all, {len(seeds)} seeds) "
            f"is over the limit of {MAX_CHILDREN}; give fewer learning rates or seeds",
            param="sweep", code="invalid_value")
    return runs


def _child_hyperparameters(hp: Hyperparameters, optimizer: str, lr: float) -> Hyperparameters:
    return Hyperparameters.model_validate({**hp.model_dump(), "optimizer": optimizer,
                                           "learning_rate": lr,
                                           "learning_rate_multiplier": "auto"})


def create_sweep(session: Session, key: ApiKey, body: JobCreate, *,
                 idempotency_key: str | None, store: ArtifactStore,
                 settings: Settings) -> tuple[JobPublic, list[str], bool]:
    """Validate and create the parent and its queued children in one transaction. Returns
    (parent, the children's ids, created); created is False on an Idempotency-Key replay
    (nothing to dispatch then)."""
    checked = jobs.check_request(session, key, body, idempotency_key=idempotency_key,
                                 store=store, settings=settings)
    if isinstance(checked, Job):
        return jobs.to_public(session, [checked])[0], [], False
    hp, task = checked.hyperparameters, checked.task
    runs = plan(body, hp, jobs.seed_for(body))
    jobs.prepare_insert(session, key, body, settings, jobs=len(runs))
    seed, now = runs[0][2], utcnow()
    # The request's hyperparameters as a plain job would resolve them; `sweep.runs` says
    # what each child trains with.
    rows = checked.train_rows
    parent = jobs.new_job(key, body, task=task, seed=seed, hyperparameters=hp, now=now,
                          train_rows=rows,
                          status=S.RUNNING, started_at=now, idempotency_key=idempotency_key,
                          request_hash=jobs.request_hash(body) if idempotency_key else None)
    children = [jobs.new_job(key, body, task=task, seed=s, now=now, parent_id=parent.id,
                             train_rows=rows,
                             hyperparameters=_child_hyperparameters(hp, o, lr))
                for o, lr, s in runs]
    metric, greater = main_metric(task)
    parent.sweep = {"metric": metric, "greater_is_better": greater, "best_job_id": None,
                    "runs": [{"job_id": child.id, "optimizer": o, "learning_rate": lr,
                              "seed": s}
                             for child, (o, lr, s) in zip(children, runs, strict=True)]}
    session.add_all([parent, *children])
    seeds = list(dict.fromkeys(s for _, _, s in runs))
    grid = ", ".join(dict.fromkeys(f"{o} at {lr:g}" for o, lr, _ in runs))
    add_event(session, parent.id, f"Created sweep {parent.id}: {len(children)} child jobs "
                                  f"({grid}; seed{'s' if len(seeds) > 1 else ''} "
                                  f"{', '.join(map(str, seeds))}), ranked by {metric}")
    for child, (optimizer, lr, s) in zip(children, runs, strict=True):
        add_event(session, child.id, f"Created fine-tuning job: {child.id} (sweep {parent.id}: "
                                     f"{optimizer}, learning rate {lr:g}, seed {s})")
    shown, created = jobs.save(session, key, body, idempotency_key, parent)
    return shown, [child.id for child in children] if created else [], created


# --- the report ----------------------------------------------------------------------------

def _weighted(entries: list[dict[str, Any]], value: Any) -> float | None:
    pairs = [(value(e), e["count"]) for e in entries]
    pairs = [(v, n) for v, n in pairs if isinstance(v, int | float)]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def sensitivity_summary(report: Any) -> dict[str, Any] | None:
    """Mean I and fraction_below per threshold, overall and over the repeated (encoder)
    blocks together (each block weighted by its parameter count)."""
    if not isinstance(report, dict) or not isinstance(report.get("overall"), dict):
        return None
    overall = report["overall"]
    out: dict[str, Any] = {"overall": {"mean": overall.get("mean"),
                                       "fraction_below": overall.get("fraction_below") or {}}}
    blocks = [b for b in (report.get("blocks") or {}).values()
              if isinstance(b, dict) and isinstance(b.get("count"), int) and b["count"] > 0]
    if blocks:
        thresholds = list((blocks[0].get("fraction_below") or {}).keys())
        out["blocks"] = {
            "count": len(blocks), "mean": _weighted(blocks, lambda b: b.get("mean")),
            "fraction_below": {t: _weighted(blocks, lambda b, t=t: (
                b.get("fraction_below") or {}).get(t)) for t in thresholds}}
    return out


def _public(child: sweeps.ChildResult) -> SweepChild:
    return SweepChild(id=child.id, optimizer=child.optimizer, learning_rate=child.learning_rate,
                      seed=child.seed, status=child.status,
                      fine_tuned_model=child.fine_tuned_model, warnings=list(child.warnings),
                      metrics=child.metrics, score=child.score)


def report(session: Session, parent: Job) -> SweepReport:
    if parent.sweep is None:
        why = (f"it is a child of the sweep '{parent.parent_id}'" if parent.parent_id
               else "it was created without sweep or compare_to")
        raise NotFoundError(f"Fine-tuning job '{parent.id}' is not a sweep: {why}.",
                            param="fine_tuning_job_id", code="not_a_sweep")
    metric, greater = main_metric(parent.task)
    results = sweeps.children(session, parent)
    optimizers = list(dict.fromkeys(run["optimizer"] for run in parent.sweep.get("runs", [])))
    optimizers += [c.optimizer for c in results if c.optimizer not in optimizers]
    bests = {o: sweeps.best_of([c for c in results if c.optimizer == o],
                               greater_is_better=greater) for o in optimizers}
    ids = [b.id for b in bests.values() if b is not None]
    reports: dict[str, Any] = dict(session.execute(  # type: ignore[arg-type]
        select(Job.id, Job.sensitivity).where(Job.id.in_(ids))).all()) if ids else {}
    side_by_side = [
        SweepBest(optimizer=o, job_id=b.id if b else None,
                  learning_rate=b.learning_rate if b else None, score=b.score if b else None,
                  metrics=b.metrics if b else {}, fine_tuned_model=b.fine_tuned_model if b
                  else None, sensitivity=sensitivity_summary(reports.get(b.id)) if b else None)
        for o, b in bests.items()]
    overall = sweeps.best_of(results, greater_is_better=greater)
    validation = session.get(File, parent.validation_file_id) \
        if parent.validation_file_id else None
    rows = file_rows(validation) if validation is not None else None
    table, comparisons, warnings = sweep_stats.analyse(
        results, own=optimizers[0] if optimizers else "", others=optimizers[1:], metric=metric,
        greater_is_better=greater, validation_rows=rows)
    return SweepReport(fine_tuning_job_id=parent.id, status=parent.status, metric=metric,
                       greater_is_better=greater, validation_rows=rows,
                       children=[_public(c) for c in results],
                       best_per_optimizer=side_by_side,
                       best=_public(overall) if overall else None,
                       rates=table, comparisons=comparisons, warnings=warnings)
