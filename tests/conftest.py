"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SAGETRAIN_MODELS_DIR holding `tiny-bert`, a 2-layer, 64-wide random BERT, and
    `tiny-llama`, a causal LM of that size with a chat template."""
    from sage_core.testing import build_tiny_llama, build_tiny_model

    root = tmp_path_factory.mktemp("models")
    build_tiny_model(root / "tiny-bert")
    build_tiny_llama(root / "tiny-llama")
    return root


@pytest.fixture(scope="session")
def tiny_model_path(models_dir: Path) -> Path:
    return models_dir / "tiny-bert"
