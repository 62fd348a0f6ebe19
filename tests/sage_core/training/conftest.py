"""Fixtures for the training engine: a models folder the catalog serves, learnable data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from training_data import spam_rows, write_jsonl


@pytest.fixture(scope="session")
def train_models_dir(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models folder the engine is given: `tiny-bert`, and `tiny-bert-nodrop` with
    dropout off (for comparisons that dropout's random masks would blur)."""
    root = tmp_path_factory.mktemp("train-models")
    shutil.copytree(tiny_model_path, root / "tiny-bert")
    shutil.copytree(tiny_model_path, root / "tiny-bert-nodrop")
    config_path = root / "tiny-bert-nodrop" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config_path.write_text(json.dumps(config))
    return root


@pytest.fixture
def spam_files(tmp_path: Path) -> tuple[Path, Path]:
    train = write_jsonl(tmp_path / "train.jsonl", spam_rows(128, seed=1))
    valid = write_jsonl(tmp_path / "valid.jsonl", spam_rows(32, seed=2))
    return train, valid
