"""The main metric's tracking: the best evaluation, early stopping, the best checkpoint."""

from __future__ import annotations

from sage_core.training.evaluator import BestTracker
from sage_core.training.progress import Progress


def test_classification_tracks_the_highest_f1_and_stops_after_patience() -> None:
    tracker = BestTracker("text-classification", patience=2, total_steps=10)
    progress = Progress()
    for step, f1 in ((2, 0.5), (4, 0.7), (6, 0.6), (8, 0.7)):
        progress.step = step
        tracker.observe(progress, {"valid_loss": 1.0, "valid_f1_macro": f1})
        if step == 4:
            tracker.checkpoint_taken(progress)
    assert (progress.best_score, progress.best_step) == (0.7, 4)
    assert progress.best_checkpoint_step == 4 and progress.evals_without_improvement == 2
    assert tracker.early_stop_due(progress)
    assert tracker.early_stop_message(progress) == (
        "early stopping at step 8: valid_f1_macro has not improved for 2 evaluations "
        "(best 0.7 at step 4)")
    progress.step = 10
    assert not tracker.early_stop_due(progress)  # the last step ends the run anyway


def test_regression_tracks_the_lowest_loss_without_patience() -> None:
    tracker = BestTracker("text-regression", patience=None, total_steps=10)
    progress = Progress()
    for step, loss in ((1, 2.0), (2, 1.0), (3, 1.5)):
        progress.step = step
        tracker.observe(progress, {"valid_loss": loss})
        tracker.checkpoint_taken(progress)
    assert (progress.best_step, progress.best_checkpoint_step) == (2, 2)
    assert not tracker.early_stop_due(progress)
