"""bench/quality.py: its split, its sensitivity summary, and one small grid end to end on
the tiny model, so the benchmark cannot rot between the runs that matter."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from sage_core.settings import get_settings

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quality.py"


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def catalog(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SAGETRAIN_MODELS_DIR", str(models_dir))
    monkeypatch.delenv("SAGETRAIN_DEVICE", raising=False)
    get_settings.cache_clear()
    yield models_dir
    get_settings.cache_clear()


def test_sms_messages_are_distinct(quality: ModuleType) -> None:
    rows = quality.read_messages(quality.sms_spam_file())
    texts = [text for _, text in rows]
    assert len(texts) == len(set(texts))
    assert 4000 < len(rows) < 4862  # the collection repeats some messages
    assert set(label for label, _ in rows) == {"ham", "spam"}


def test_split_is_stratified_disjoint_exact_and_fixed(quality: ModuleType) -> None:
    rows = quality.read_messages(quality.sms_spam_file())
    train, dev = quality.stratified_split(list(rows), 1000, 1000)
    assert (len(train), len(dev)) == (1000, 1000)
    assert not {t for _, t in train} & {t for _, t in dev}
    spam_share = sum(label == "spam" for label, _ in rows) / len(rows)
    for split in (train, dev):
        assert abs(Counter(label for label, _ in split)["spam"] - 1000 * spam_share) <= 1
    again = quality.stratified_split(list(rows), 1000, 1000)
    assert (train, dev) == again
    with pytest.raises(SystemExit, match="distinct ones available"):
        quality.stratified_split(list(rows), 4000, 1000)


def test_low_sensitivity_weights_blocks_by_size(quality: ModuleType) -> None:
    def entry(count: int, below: float, mean: float) -> dict[str, object]:
        return {"count": count, "mean": mean, "fraction_below": {"1e-07": below}}

    report = {"overall": entry(100, 0.5, 1.0),
              "blocks": {"layer.0": entry(30, 0.0, 2.0), "layer.1": entry(10, 1.0, 6.0)}}
    out = quality.low_sensitivity(report)
    assert out["overall_below_1e-07"] == 0.5
    assert out["blocks_below_1e-07"] == pytest.approx(10 / 40)
    assert out["blocks_mean"] == pytest.approx((30 * 2.0 + 10 * 6.0) / 40)
    assert quality.low_sensitivity(None) == {}


def test_small_grid_end_to_end_and_resumes(quality: ModuleType, catalog: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["--model", "tiny-bert", "--train-size", "64", "--dev-size", "32", "--epochs", "1",
            "--seeds", "1", "2", "--max-seq-length", "32", "--output", str(out)]
    assert quality.main([*argv, "--arm", "adamw:1e-3", "--jobs", "1"]) == 0
    runs = [json.loads(line) for line in (out / "quality_runs.jsonl").read_text().splitlines()]
    assert [(r["arm"], r["seed"]) for r in runs] == [("adamw", 1), ("adamw", 2)]

    # The script itself, two runs at a time in spawned processes: runs only the four new
    # SAGE runs (beta3 0.6, two rates), then reports all six.
    recipes = ["--arm", "adamw:1e-3", "--arm", "sage/b3=0.6:1e-3,3e-3"]
    done = subprocess.run([sys.executable, str(BENCH), *argv, *recipes, "--jobs", "2"],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "SAGETRAIN_MODELS_DIR": str(catalog)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 runs (2 already done)" in done.stdout
    assert "4 runs in" in done.stdout and "with 2 process(es)" in done.stdout
    runs = [json.loads(line) for line in (out / "quality_runs.jsonl").read_text().splitlines()]
    assert Counter(r["arm"] for r in runs) == {"adamw": 2, "sage/b3=0.6": 4}
    for run in runs:
        assert run["steps"] == 2  # 64 examples, batch 32, one epoch
        assert 0 <= run["valid_accuracy"] <= 1
        assert 0 <= run["blocks_below_1e-07"] <= 1
    assert {r["beta3"] for r in runs if r["optimizer"] == "sage"} == {0.6}
    report = (out / "quality.md").read_text()
    assert "| adamw | 0.001 | 2 |" in report
    assert "| sage/b3=0.6 | 0.003 | 2 |" in report
    assert "Each recipe's best against AdamW's best" in report
    assert "Best rate at the edge of its grid" in report  # a two-rate grid has no inside
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recipe_names_and_older_run_lines(quality: ModuleType) -> None:
    arm = quality.Arm.parse("sage/b3=0.6/scope=all:1e-4,3e-4", quality.SPAM_ARMS)
    assert (arm.name, arm.lrs, arm.beta3, arm.scope) == (
        "sage/b3=0.6/scope=all", (1e-4, 3e-4), 0.6, "all")
    # without rates, the case's own grid for that recipe
    assert quality.Arm.parse("adamax", quality.SPAM_ARMS).lrs == (1e-4, 3e-4, 1e-3, 3e-3)
    assert quality.Arm.parse("adamw:1e-3", ()).beta3 is None  # beta3 means nothing to AdamW
    with pytest.raises(SystemExit, match="no default grid for sage/b3=0.7"):
        quality.Arm.parse("sage/b3=0.7", quality.SPAM_ARMS)
    with pytest.raises(SystemExit, match="unknown option"):
        quality.Arm.parse("sage/lr=3", quality.SPAM_ARMS)
    # run lines written before recipes were named: SAGE then ran with beta3 0.85
    assert quality.arm_of({"optimizer": "sage"}) == "sage/b3=0.85"
    assert quality.arm_of({"optimizer": "adamw"}) == "adamw"


def _cell(scores: dict[int, float]) -> dict[str, object]:
    return {"runs": {seed: {"valid_accuracy": v} for seed, v in scores.items()}}


def test_paired_interval_and_its_verdict(quality: ModuleType) -> None:
    # the same +1 point on every seed: a sure lead, an interval of width 0
    mean, half, n = quality.paired(_cell({1: 0.91, 2: 0.81, 3: 0.71}),
                                   _cell({1: 0.90, 2: 0.80, 3: 0.70}), "valid_accuracy", 100)
    assert (round(mean, 6), round(half, 6), n) == (1.0, 0.0, 3)
    assert quality.verdict(mean, half, "sage", "adamw") == "sage ahead by 1.00 ± 0.00"
    # differences +2, -1, +1: mean 0.67, t(0.975, 2) = 4.303 x 1.528 / sqrt(3) = 3.79
    mean, half, n = quality.paired(_cell({1: 0.92, 2: 0.79, 3: 0.71, 4: 0.5}),
                                   _cell({1: 0.90, 2: 0.80, 3: 0.70}), "valid_accuracy", 100)
    assert n == 3 and mean == pytest.approx(2 / 3) and half == pytest.approx(3.7947, abs=1e-3)
    assert quality.verdict(mean, half, "sage", "adamw") == "no difference shown"
    assert quality.verdict(-2.0, 0.5, "sage", "adamw") == "adamw ahead by 2.00 ± 0.50"
    mean, half, n = quality.paired(_cell({1: 0.9}), _cell({1: 0.8}), "valid_accuracy", 100)
    assert half is None and n == 1
    assert "no difference claimed" in quality.verdict(mean, half, "sage", "adamw")


def test_number_split_is_disjoint_exact_and_fixed(quality: ModuleType) -> None:
    train, dev = quality.number_split(600, 200)
    assert (len(train), len(dev)) == (600, 200)
    assert not {r["source"] for r in train} & {r["source"] for r in dev}
    assert quality.number_split(600, 200) == (train, dev)
    assert {"source": "three hundred and twelve", "target": "trois cent douze"} in train + dev
    with pytest.raises(SystemExit, match="1000 available"):
        quality.number_split(900, 200)


def test_seq2seq_case_end_to_end(quality: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert quality.main(["--case", "seq2seq", "--train-size", "32", "--dev-size", "8",
                         "--epochs", "1", "--seeds", "1", "--arm", "adamw:1e-3",
                         "--arm", "sage:3e-3", "--jobs", "1", "--output", str(out)]) == 0
    runs = [json.loads(line)
            for line in (out / "quality_seq2seq_runs.jsonl").read_text().splitlines()]
    assert [(r["optimizer"], r["steps"]) for r in runs] == [("adamw", 2), ("sage", 2)]
    assert all(0 <= r["valid_bleu"] <= 100 and 0 <= r["valid_chrf"] <= 100 for r in runs)
    report = (out / "quality_seq2seq.md").read_text()
    assert "| sage/b3=0.85 | 0.003 | 1 |" in report
    assert "| recipe | BLEU difference |" in report
    assert (out / "quality_seq2seq.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "quality.md").exists()  # the classification report is left alone


def test_digits_case_end_to_end(quality: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert quality.main(["--case", "digits", "--train-size", "40", "--dev-size", "20",
                         "--epochs", "1", "--seeds", "1", "--arm", "adamw:1e-3",
                         "--arm", "adamax-sage:3e-3", "--jobs", "1", "--output", str(out)]) == 0
    runs = [json.loads(line)
            for line in (out / "quality_digits_runs.jsonl").read_text().splitlines()]
    assert [(r["arm"], r["steps"]) for r in runs] == [("adamw", 2), ("adamax-sage/b3=0.85", 2)]
    assert all(0 <= r["valid_accuracy"] <= 1 for r in runs)
    report = (out / "quality_digits.md").read_text()
    assert "10 classes" in report and "40 training, 20 dev" in report
    assert "| adamax-sage/b3=0.85 | 0.003 | 1 |" in report
