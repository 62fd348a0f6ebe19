"""The CLI prints a run's trivial baseline and its warnings at the end: `sagetrain train`'s
summary and `sagetrain jobs watch`'s outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_core.training import TrainResult
from sagetrain.commands.jobs import _outcome
from sagetrain.commands.train import _print_summary

WARNING = {"code": "predicts_one_class",
           "message": "the final model predicts class 'ham' for 100% of the 16 validation rows"}


def test_train_summary_shows_the_baseline_apart_and_each_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = TrainResult(status="completed", step=1, total_steps=1, epoch=1.0,
                         final_dir=tmp_path / "final",
                         metrics={"valid_f1_macro": 0.43, "baseline_f1_macro": 0.43},
                         warnings=[WARNING])
    _print_summary(result, tmp_path)
    out = capsys.readouterr().out
    assert "validation: valid_f1_macro=0.4300\n" in out
    assert "trivial baseline: baseline_f1_macro=0.4300\n" in out
    assert f"warning: predicts_one_class: {WARNING['message']}\n" in out


def test_train_summary_without_warnings_prints_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _print_summary(TrainResult(status="completed", step=1, total_steps=1, epoch=1.0,
                               final_dir=None), tmp_path)
    assert "warning" not in capsys.readouterr().out


def test_watch_outcome_prints_a_succeeded_jobs_warnings(
        capsys: pytest.CaptureFixture[str]) -> None:
    job = {"status": "succeeded", "progress": {"step": 8, "total_steps": 8},
           "fine_tuned_model": "ft:tiny-bert:t:x", "warnings": [WARNING]}
    assert _outcome(job) == 0
    out = capsys.readouterr().out
    assert out.endswith(f"warning: predicts_one_class: {WARNING['message']}\n")
    assert _outcome({**job, "warnings": []}) == 0
    assert "warning" not in capsys.readouterr().out
