"""Data and spec builders shared by the training tests (imported by name: this folder is on
sys.path under pytest's default import mode)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from sage_core.schemas import JobSpec, ResolvedSpec

SPAM_WORDS = ["free", "cash", "prize", "win", "claim", "urgent", "call", "now"]
HAM_WORDS = ["hello", "see", "you", "later", "home", "good", "ok", "fine"]
FILLER = ["the", "a", "is", "to", "of", "and"]


def spam_rows(n: int, seed: int = 0, labels: tuple[Any, Any] = ("ham", "spam"),
              pairs: bool = False) -> list[dict[str, Any]]:
    """Alternating ham/spam texts: three words of their class among two fillers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(SPAM_WORDS if i % 2 else HAM_WORDS, 3) + rng.sample(FILLER, 2)
        rng.shuffle(words)
        row: dict[str, Any] = {"text": " ".join(words), "label": labels[i % 2]}
        if pairs:
            row["text_pair"] = " ".join(rng.sample(FILLER, 3))
        rows.append(row)
    return rows


def regression_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The label is the number of spam words among four (0 to 4)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 4)
        words = rng.sample(SPAM_WORDS, k) + rng.sample(HAM_WORDS, 4 - k)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": float(k)})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_spec(model: str = "tiny-bert", task: str = "text-classification", seed: int = 0,
              **hyperparameters: Any) -> ResolvedSpec:
    hp: dict[str, Any] = {"n_epochs": 3, "batch_size": 8, "learning_rate": 3e-3}
    hp.update(hyperparameters)
    return JobSpec(model=model, task=task, seed=seed, hyperparameters=hp).resolve()
