"""validation_split in the engine: held-out rows serve as the validation file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from training_data import make_spec, spam_rows, write_jsonl

from sage_core.errors import InvalidSpecError
from sage_core.training import Callbacks, TrainResult, run_training
from sage_core.training.holdout import SPLIT_FILE


def _run(spec: Any, train_file: Path, out: Path, models_dir: Path, *,
         stop_after: int | None = None, valid: Path | None = None
         ) -> tuple[TrainResult, list[dict[str, Any]], list[tuple[str, dict[str, Any] | None]]]:
    rows: list[dict[str, Any]] = []
    events: list[tuple[str, dict[str, Any] | None]] = []
    steps = iter(range(1, 10_000))
    callbacks = Callbacks(
        on_metrics=rows.append, on_event=lambda level, message, data: events.append(
            (message, data)),
        should_stop=lambda: stop_after is not None and next(steps) >= stop_after)
    result = run_training(spec, train_file, out, validation_file=valid, callbacks=callbacks,
                          models_dir=models_dir, device="cpu")
    return result, rows, events


def _split_event(events: list[tuple[str, dict[str, Any] | None]]) -> dict[str, Any]:
    found = [data for message, data in events if message.startswith("validation_split")]
    assert len(found) == 1 and found[0] is not None
    return found[0]


def test_held_out_rows_validate_and_resume_holds_out_the_same(
        train_models_dir: Path, tmp_path: Path) -> None:
    rows = spam_rows(120, seed=3)[:100] + [r for r in spam_rows(60, seed=4) if
                                           r["label"] == "spam"][:20]  # 50 ham, 70 spam
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    spec = make_spec(n_epochs=1, validation_split=0.25, early_stopping_patience=5)
    out = tmp_path / "out"
    stopped, _, first = _run(spec, train_file, out, train_models_dir, stop_after=3)
    assert stopped.status == "stopped"
    held = _split_event(first)
    assert held["count"] == 30 and held["stratified"] and held["seed"] == spec.seed
    labels = [rows[line - 1]["label"] for line in held["lines"]]
    assert labels.count("ham") == 13 and labels.count("spam") == 17  # 12.5:17.5, tie to ham
    assert len(set(held["lines"])) == 30

    result, metrics, second = _run(spec, train_file, out, train_models_dir)
    assert ("resumed from step 3", None) in second
    assert _split_event(second) == held
    assert any("training tiny-bert" in m and "on 90 examples, validating on 30" in m
               for m, _ in second)
    assert result.status == "completed" and "valid_f1_macro" in result.metrics
    assert [r for r in metrics if "valid_loss" in r]
    assert result.final_dir is not None
    assert json.loads((result.final_dir / SPLIT_FILE).read_text()) == held
    assert (result.final_dir / "sensitivity.json").exists()

    other = make_spec(n_epochs=1, validation_split=0.25, early_stopping_patience=5, seed=9)
    _, _, events = _run(other, train_file, tmp_path / "other", train_models_dir, stop_after=1)
    assert _split_event(events)["lines"] != held["lines"]


def test_a_split_and_a_validation_file_conflict(train_models_dir: Path,
                                                tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", spam_rows(20))
    valid_file = write_jsonl(tmp_path / "valid.jsonl", spam_rows(8, seed=1))
    with pytest.raises(InvalidSpecError, match="validation_split"):
        _run(make_spec(validation_split=0.2), train_file, tmp_path / "out", train_models_dir,
             valid=valid_file)
