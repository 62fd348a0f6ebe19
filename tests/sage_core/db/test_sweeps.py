"""sage_core.db.sweeps: the ranking rule, and the main metric kept in step with the tasks."""

from __future__ import annotations

from sage_core.db.sweeps import ChildResult, best_of
from sage_core.names import TASKS, main_metric


def test_every_task_has_a_main_metric_the_engine_logs() -> None:
    from sage_core.training.registry import TASKS as TASK_CLASSES

    assert set(TASKS) == set(TASK_CLASSES)
    for name, task in TASK_CLASSES.items():
        assert main_metric(name) == (f"valid_{task.main_metric}", task.greater_is_better)
    assert main_metric("no-such-task") == ("valid_loss", False)


def _child(ident: str, score: float | None, status: str = "succeeded") -> ChildResult:
    return ChildResult(id=ident, optimizer="sage", learning_rate=1e-4, status=status,
                       fine_tuned_model=f"ft:{ident}", metrics={}, score=score)


def test_best_of_ranks_succeeded_children_only() -> None:
    children = [_child("a", 0.5), _child("b", 0.9, "failed"), _child("c", 0.7),
                _child("d", 0.7), _child("e", None)]
    assert best_of(children, greater_is_better=True).id == "c"  # type: ignore[union-attr]
    assert best_of(children, greater_is_better=False).id == "a"  # type: ignore[union-attr]
    assert best_of([_child("x", None), _child("y", 0.1)],
                   greater_is_better=True).id == "y"  # type: ignore[union-attr]
    assert best_of([_child("x", None)], greater_is_better=True).id == "x"  # type: ignore[union-attr]
    assert best_of([_child("z", 1.0, "cancelled")], greater_is_better=True) is None
