"""n_epochs and validation_split "auto": resolved from the training file's size."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sage_core.datafiles import Dataset, Example, parse_dataset
from sage_core.errors import InvalidSpecError
from sage_core.names import AUTO_EPOCHS_MAX, DEFAULT_EPOCHS
from sage_core.schemas import Hyperparameters, JobSpec, auto_epochs
from sage_core.training.holdout import split_dataset


@pytest.mark.parametrize(("rows", "batch_size", "epochs"), [
    (2, 32, AUTO_EPOCHS_MAX),  # 1 step an epoch: capped
    (216, 32, AUTO_EPOCHS_MAX),  # 7 steps an epoch would want 15
    (400, 32, 8),  # 13 steps an epoch: 8 reach 100 steps
    (1000, 32, 4),  # 32 steps an epoch
    (3200, 32, DEFAULT_EPOCHS),  # 100 steps an epoch: the floor
    (100_000, 32, DEFAULT_EPOCHS),
    (400, 8, DEFAULT_EPOCHS),  # 50 steps an epoch at batch 8
])
def test_auto_epochs_by_size(rows: int, batch_size: int, epochs: int) -> None:
    assert auto_epochs(rows, batch_size) == epochs


def test_resolve_with_the_file_size() -> None:
    hp = Hyperparameters()
    # 240 rows: 24 held out, 216 trained on at 32 a step
    small = hp.resolve("text-classification", train_rows=240)
    assert (small.n_epochs, small.validation_split) == (AUTO_EPOCHS_MAX, 0.1)
    # under 100 rows nothing is held out; with a validation file neither
    assert hp.resolve("text-classification", train_rows=99).validation_split == 0
    assert hp.resolve("text-classification", train_rows=240,
                      has_validation=True).validation_split == 0
    # unknown size: the fixed default, no split
    unknown = hp.resolve("text-classification")
    assert (unknown.n_epochs, unknown.validation_split) == (DEFAULT_EPOCHS, 0)
    given = Hyperparameters(n_epochs=2, validation_split=0.25).resolve(
        "text-regression", train_rows=40)
    assert (given.n_epochs, given.validation_split) == (2, 0.25)
    spec = JobSpec(model="m").resolve(train_rows=240)
    assert spec.hyperparameters.n_epochs == AUTO_EPOCHS_MAX


def test_a_split_with_a_validation_file_is_refused() -> None:
    with pytest.raises(InvalidSpecError, match="validation_split") as caught:
        Hyperparameters(validation_split=0.2).resolve(train_rows=500, has_validation=True)
    assert caught.value.param == "hyperparameters.validation_split"
    Hyperparameters(validation_split=0).resolve(train_rows=500, has_validation=True)
    for bad in (-0.1, 0.6):
        with pytest.raises(ValidationError, match="validation_split"):
            Hyperparameters(validation_split=bad)


def _classes(counts: dict[str, int]) -> Dataset:
    examples = [Example(text=f"{label} {i}", label=label)
                for label, n in counts.items() for i in range(n)]
    return Dataset(examples=examples, format="jsonl", task="text-classification")


def test_stratified_split_is_proportional_disjoint_and_seeded() -> None:
    data = _classes({"ham": 180, "spam": 60, "rare": 1})
    first = split_dataset(data, 0.1, seed=7)
    held = [data.examples[i].label for i in first.held_out]
    assert len(held) == 24 and held.count("ham") == 18 and held.count("spam") == 6
    assert "rare" not in held  # every label keeps a training example
    assert len(first.train.examples) + len(first.valid.examples) == 241
    assert not set(first.valid.examples) & set(first.train.examples)
    assert split_dataset(data, 0.1, seed=7).held_out == first.held_out
    assert split_dataset(data, 0.1, seed=8).held_out != first.held_out
    assert first.lines == [i + 1 for i in first.held_out]  # no lines known: example numbers


def test_plain_split_names_file_lines() -> None:
    text = "".join(f'{{"text": "t{i}", "label": {i}.5}}\n' + ("\n" if i % 3 == 0 else "")
                   for i in range(30))
    data = parse_dataset(text.encode(), "r.jsonl", "text-regression")
    split = split_dataset(data, 0.2, seed=1)
    assert not split.stratified and len(split.held_out) == 6
    for index, line in zip(split.held_out, split.lines, strict=True):
        assert text.splitlines()[line - 1] == f'{{"text": "t{index}", "label": {index}.5}}'
