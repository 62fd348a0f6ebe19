"""A validation split: the training examples held out when no validation file is given.

Which examples are held out is a function of (the file, the fraction, the seed) only, so a
resumed run holds out the same ones. Classification tasks split each label's examples in
proportion (every label keeps at least one training example); other tasks split at random.
Torch-free.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sage_core.datafiles import Dataset
from sage_core.schemas import held_out_count

SPLIT_FILE = "validation_split.json"
STRATIFIED_TASKS = ("text-classification", "image-classification")
SHOWN_LINES = 20  # in the event's message
EVENT_LINES = 1000  # in the event's data; validation_split.json holds them all


@dataclass(frozen=True)
class Holdout:
    train: Dataset
    valid: Dataset
    held_out: list[int]  # 0-based example indices, ascending
    lines: list[int]  # their 1-based line numbers in the file (example numbers if unknown)
    stratified: bool

    def message(self, total: int, fraction: float, filename: str) -> str:
        shown = ", ".join(str(n) for n in self.lines[:SHOWN_LINES])
        more = f" and {len(self.lines) - SHOWN_LINES} more" if len(
            self.lines) > SHOWN_LINES else ""
        how = "stratified by label" if self.stratified else "at random"
        return (f"validation_split {fraction:g}: held out {len(self.held_out)} of {total} "
                f"examples of {filename} for validation ({how}), lines {shown}{more}")

    def record(self, fraction: float, seed: int, *, max_lines: int | None = None
               ) -> dict[str, Any]:
        """What was held out: count and lines (the first `max_lines` of them, if given)."""
        return {"validation_split": fraction, "seed": seed, "stratified": self.stratified,
                "count": len(self.held_out), "lines": self.lines[:max_lines]}

    def write(self, folder: Path, fraction: float, seed: int) -> None:
        (folder / SPLIT_FILE).write_text(json.dumps(self.record(fraction, seed)) + "\n")


def split_dataset(data: Dataset, fraction: float, seed: int) -> Holdout:
    """Hold out `fraction` of `data` (held_out_count of its examples), seeded by `seed`."""
    n = len(data.examples)
    count = held_out_count(n, fraction)
    rng = random.Random(f"validation_split:{seed}")
    stratified = data.task in STRATIFIED_TASKS
    chosen = _stratified(data, count, rng) if stratified else rng.sample(range(n), count)
    held = sorted(chosen)
    held_set = set(held)
    kept = [i for i in range(n) if i not in held_set]
    lines = [data.lines[i] for i in held] if len(data.lines) == n else [i + 1 for i in held]

    def subset(indices: list[int]) -> Dataset:
        return replace(data, examples=[data.examples[i] for i in indices],
                       lines=[data.lines[i] for i in indices] if len(data.lines) == n else [])

    return Holdout(train=subset(kept), valid=subset(held), held_out=held, lines=lines,
                   stratified=stratified)


def _stratified(data: Dataset, count: int, rng: random.Random) -> list[int]:
    """`count` indices spread over the labels in proportion (largest remainders), each label
    keeping at least one example for training."""
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(data.examples):
        groups.setdefault(str(example.label), []).append(i)
    labels = sorted(groups)
    n = len(data.examples)
    exact = {label: count * len(groups[label]) / n for label in labels}
    quota = {label: math.floor(exact[label]) for label in labels}
    by_remainder = sorted(labels, key=lambda lb: (-(exact[lb] - quota[lb]), lb))
    for label in by_remainder[:count - sum(quota.values())]:
        quota[label] += 1
    chosen: list[int] = []
    for label in labels:
        chosen += rng.sample(groups[label], min(quota[label], len(groups[label]) - 1))
    return chosen
