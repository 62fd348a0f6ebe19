"""Tasks: label mapping, tokenisation of single texts and pairs, dynamic padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_data import spam_rows, write_jsonl

from sage_core.datafiles import load_dataset
from sage_core.errors import InvalidSpecError
from sage_core.training.registry import TASKS, get_task
from sage_core.training.tasks import TextClassification, TextRegression


def _classification(tmp_path: Path, rows: list[dict], tiny: Path) -> TextClassification:
    data = load_dataset(write_jsonl(tmp_path / "t.jsonl", rows), "text-classification")
    task = TextClassification()
    task.prepare(data, None, train_name="t.jsonl", validation_name=None)
    task.load_processor(str(tiny))
    return task


def test_registry() -> None:
    assert set(TASKS) == {"text-classification", "text-regression", "chat", "completion",
                          "seq2seq", "image-classification"}
    assert isinstance(get_task("text-regression"), TextRegression)
    with pytest.raises(InvalidSpecError, match="unknown task 'speech'"):
        get_task("speech")


def test_string_and_int_labels_map_to_ids(tmp_path: Path, tiny_model_path: Path) -> None:
    task = _classification(tmp_path, spam_rows(4), tiny_model_path)
    assert task.label_names == ["ham", "spam"]
    ints = _classification(tmp_path, spam_rows(4, labels=(7, 3)), tiny_model_path)
    # numeric order, not string order, for integer labels
    assert ints.label_names == ["3", "7"] and ints.label2id == {"3": 0, "7": 1}


def test_collate_pads_to_the_longest_and_masks(tmp_path: Path, tiny_model_path: Path) -> None:
    rows = [{"text": "free", "label": "spam"}, {"text": "hello see you later", "label": "ham"}]
    task = _classification(tmp_path, rows, tiny_model_path)
    data = load_dataset(tmp_path / "t.jsonl", "text-classification")
    items = task.encode(data, max_length=32)
    batch = task.collate(items)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    assert ids.shape == mask.shape == (2, 6)  # [CLS] 4 words [SEP]
    assert mask.sum(dim=1).tolist() == [3, 6]
    assert (ids[0, 3:] == task.tokenizer.pad_token_id).all()
    assert batch.targets.tolist() == [1, 0] and batch.targets.dtype == torch.long
    assert batch.tokens == 9 and batch.size == 2


def test_pairs_get_segment_ids_and_truncate(tmp_path: Path, tiny_model_path: Path) -> None:
    rows = [{"text": "free cash", "text_pair": "hello see you", "label": "a"},
            {"text": "win " * 40, "label": "b"}]
    task = _classification(tmp_path, rows, tiny_model_path)
    items = task.encode(load_dataset(tmp_path / "t.jsonl", "text-classification"),
                        max_length=16)
    assert items[0].features["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(items[1].features["input_ids"]) == 16


def test_validation_label_unknown_to_training(tmp_path: Path) -> None:
    train = load_dataset(write_jsonl(tmp_path / "train.jsonl", spam_rows(4)),
                         "text-classification")
    odd = spam_rows(4, labels=("ham", "eggs"))
    valid = load_dataset(write_jsonl(tmp_path / "valid.jsonl", odd), "text-classification")
    with pytest.raises(InvalidSpecError, match=r"valid\.jsonl: label 'eggs'.*train\.jsonl"):
        TextClassification().prepare(train, valid, train_name="train.jsonl",
                                     validation_name="valid.jsonl")


def test_max_length_limit_from_the_model(tmp_path: Path, tiny_model_path: Path) -> None:
    task = _classification(tmp_path, spam_rows(4), tiny_model_path)
    assert task.max_length_limit() == 512


def test_regression_loss_is_per_example_squared_error() -> None:
    class Out:
        logits = torch.tensor([[1.0], [3.0]])

    losses = TextRegression().loss(Out(), torch.tensor([0.0, 1.0]))
    assert losses.tolist() == [1.0, 4.0]


def test_collate_rounds_the_width_up(tmp_path: Path, tiny_model_path: Path) -> None:
    rows = [{"text": "free", "label": "spam"}, {"text": "hello see you later", "label": "ham"}]
    task = _classification(tmp_path, rows, tiny_model_path)
    items = task.encode(load_dataset(tmp_path / "t.jsonl", "text-classification"), 32)
    batch = task.collate(items, pad_to_multiple_of=8)
    assert batch.inputs["input_ids"].shape == (2, 8)
    assert batch.inputs["attention_mask"].sum().item() == batch.tokens == 9
