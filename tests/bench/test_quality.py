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
            "--seeds", "1", "2", "--sage-lrs", "1e-3", "3e-3", "--adamw-lrs", "1e-3",
            "--max-seq-length", "32", "--output", str(out)]
    assert quality.main([*argv, "--only", "adamw", "--jobs", "1"]) == 0
    runs = [json.loads(line) for line in (out / "quality_runs.jsonl").read_text().splitlines()]
    assert [(r["optimizer"], r["seed"]) for r in runs] == [("adamw", 1), ("adamw", 2)]

    # The script itself, two runs at a time in spawned processes: runs only sage's four,
    # then reports all six.
    done = subprocess.run([sys.executable, str(BENCH), *argv, "--jobs", "2"],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "SAGETRAIN_MODELS_DIR": str(catalog)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 runs (2 already done)" in done.stdout
    assert "4 runs in" in done.stdout and "with 2 process(es)" in done.stdout
    runs = [json.loads(line) for line in (out / "quality_runs.jsonl").read_text().splitlines()]
    assert Counter(r["optimizer"] for r in runs) == {"adamw": 2, "sage": 4}
    for run in runs:
        assert run["steps"] == 2  # 64 examples, batch 32, one epoch
        assert 0 <= run["valid_accuracy"] <= 1
        assert 0 <= run["blocks_below_1e-07"] <= 1
    report = (out / "quality.md").read_text()
    assert "| adamw | 0.001 | 2 |" in report
    assert "| sage | 0.003 | 2 |" in report
    assert "SAGE's best minus AdamW's best" in report
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
                         "--epochs", "1", "--seeds", "1", "--sage-lrs", "3e-3",
                         "--adamw-lrs", "1e-3", "--jobs", "1", "--output", str(out)]) == 0
    runs = [json.loads(line)
            for line in (out / "quality_seq2seq_runs.jsonl").read_text().splitlines()]
    assert [(r["optimizer"], r["steps"]) for r in runs] == [("adamw", 2), ("sage", 2)]
    assert all(0 <= r["valid_bleu"] <= 100 and 0 <= r["valid_chrf"] <= 100 for r in runs)
    report = (out / "quality_seq2seq.md").read_text()
    assert "| sage | 0.003 | 1 |" in report and "SAGE's best minus AdamW's best, dev BLEU" in report
    assert (out / "quality_seq2seq.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "quality.md").exists()  # the classification report is left alone
