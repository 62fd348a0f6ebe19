"""`sagetrain jobs sweep ID` prints the report as a table (`--json` keeps the JSON); here on
a constructed report, through the command with a stubbed client."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sagetrain.cli import main
from sagetrain.commands.jobs import sweep_table

REPORT: dict[str, Any] = {
    "object": "fine_tuning.job.sweep", "fine_tuning_job_id": "ftjob-p", "status": "succeeded",
    "metric": "valid_f1_macro", "greater_is_better": True, "validation_rows": 64,
    "children": [
        {"id": f"ftjob-{o}{i}{s}", "optimizer": o, "learning_rate": lr, "seed": s,
         "status": "failed" if (o, i, s) == ("adamw", 0, 2) else "succeeded",
         "fine_tuned_model": None, "warnings": [], "metrics": {}, "score": None}
        for o, rates in (("sage", (1.5e-4, 4.5e-4)), ("adamw", (5e-5, 1.5e-4)))
        for i, lr in enumerate(rates) for s in (1, 2)],
    "best_per_optimizer": [],
    "best": {"id": "ftjob-sage11", "optimizer": "sage", "learning_rate": 4.5e-4, "seed": 1,
             "status": "succeeded", "fine_tuned_model": "ft:tiny-bert:x", "score": 0.94},
    "rates": [
        {"optimizer": "sage", "learning_rate": 1.5e-4, "seeds": [1, 2], "n": 2, "mean": 0.81,
         "std": 0.02, "best": False},
        {"optimizer": "sage", "learning_rate": 4.5e-4, "seeds": [1, 2], "n": 2, "mean": 0.93,
         "std": 0.01, "best": True},
        {"optimizer": "adamw", "learning_rate": 5e-5, "seeds": [1], "n": 1, "mean": 0.7,
         "std": None, "best": False},
        {"optimizer": "adamw", "learning_rate": 1.5e-4, "seeds": [1, 2], "n": 2, "mean": 0.8,
         "std": 0.1, "best": True}],
    "comparisons": [{"a": "sage", "b": "adamw", "a_learning_rate": 4.5e-4,
                     "b_learning_rate": 1.5e-4, "seeds": [1, 2], "difference": 0.13,
                     "half_width": 1.2, "low": -1.07, "high": 1.33,
                     "verdict": "no difference shown"}],
    "warnings": [{"code": "best_at_grid_edge", "optimizer": "sage", "job_ids": [],
                  "suggested_grid": [4.5e-4, 1.35e-3, 4.05e-3],
                  "message": "sage's best learning rate 0.00045 is the highest of its grid"}],
}


def test_the_table_groups_rates_marks_the_best_and_gives_the_verdicts() -> None:
    lines = sweep_table(REPORT).splitlines()
    assert lines[0] == ("sweep ftjob-p: succeeded; valid_f1_macro (higher is better) on 64 "
                        "validation rows")
    header = lines[2].split()
    assert header == ["optimizer", "learning", "rate", "mean", "±", "std", "seeds", "runs"]
    rows = [line.split(maxsplit=1) for line in lines[3:7]]
    assert lines[4].startswith("*") and lines[6].startswith("*")
    assert rows[1][1].split()[:5] == ["sage", "0.00045", "0.9300", "0.0100", "2"]
    assert lines[5].split()[:5] == ["adamw", "5e-05", "0.7000", "-", "1"]
    assert lines[5].endswith("1 succeeded, 1 failed")
    assert ("sage at 0.00045 vs adamw at 0.00015: difference +0.1300 over 2 paired seeds, "
            "95% interval [-1.0700, 1.3300]: no difference shown") in lines
    assert lines[-3] == ("warning: best_at_grid_edge: sage's best learning rate 0.00045 is "
                         "the highest of its grid")
    assert lines[-1] == ("best child: ftjob-sage11 (sage, learning rate 0.00045, seed 1, "
                         "valid_f1_macro=0.9400), model ft:tiny-bert:x")


def test_the_command_prints_the_table_or_the_json(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from sagetrain.client import Client

    monkeypatch.setattr(Client, "sweep_report", lambda self, job_id: REPORT)
    connection = ["--base-url", "http://127.0.0.1:9", "--api-key", "k"]
    assert main(["jobs", "sweep", "ftjob-p", *connection]) == 0
    assert capsys.readouterr().out == sweep_table(REPORT) + "\n"
    assert main(["jobs", "sweep", "ftjob-p", "--json", *connection]) == 0
    assert json.loads(capsys.readouterr().out) == REPORT
