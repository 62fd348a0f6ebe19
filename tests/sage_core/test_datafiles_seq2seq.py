"""sage_core.datafiles on seq2seq files ({"source", "target"} rows, JSONL or CSV/TSV): the
task recognised from the content, every problem named by line and field, the statistics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sage_core.datafiles import Seq2SeqExample, parse_dataset
from sage_core.errors import DataFileError

PAIRS = [{"source": "three hundred and twelve", "target": "trois cent douze"},
         {"source": "one", "target": "un"},
         {"source": "twenty-one", "target": "vingt et un"}]
LAYOUT = "seq2seq (source and target)"


def jsonl(*rows: Any) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n").encode()


def problems(data: bytes, task: str | None = None, name: str = "f.jsonl") -> list[tuple]:
    with pytest.raises(DataFileError) as info:
        parse_dataset(data, name, task)
    assert info.value.filename == name and info.value.param == "file"
    return [(e.line, e.field, e.message) for e in info.value.errors]


@pytest.mark.parametrize("task", [None, "seq2seq"])
def test_seq2seq_jsonl_is_recognised_with_its_statistics(task: str | None) -> None:
    dataset = parse_dataset(jsonl(*PAIRS), "train.jsonl", task)
    assert dataset.task == "seq2seq"
    assert dataset.examples == [Seq2SeqExample(**p) for p in PAIRS]
    assert dataset.stats() == {
        "examples": 3, "format": "jsonl",
        "source_characters": {"min": 3, "mean": 12.3, "max": 24},
        "target_characters": {"min": 2, "mean": 9.7, "max": 16}}


@pytest.mark.parametrize(("name", "sep"), [("t.csv", ","), ("t.tsv", "\t")])
def test_csv_and_tsv_with_source_and_target_columns(name: str, sep: str) -> None:
    text = f"source{sep}target\n" + "".join(
        f"{p['source']}{sep}{p['target']}\n" for p in PAIRS)
    dataset = parse_dataset(text.encode(), name, None)
    assert dataset.task == "seq2seq" and dataset.format == name[-3:]
    assert dataset.examples == [Seq2SeqExample(**p) for p in PAIRS]
    # a quoted field keeps its comma
    quoted = parse_dataset(b'source,target\n"one, two","un, deux"\na,b\n', "q.csv", "seq2seq")
    assert quoted.examples[0] == Seq2SeqExample("one, two", "un, deux")


def test_empty_or_missing_source_and_target_are_named_by_line() -> None:
    issues = problems(jsonl(PAIRS[0], {"source": " ", "target": "x"},
                            {"source": "y", "target": ""}, {"source": "z"},
                            {"source": "a", "target": 3}, {**PAIRS[1], "label": "x"}))
    assert issues == [
        (2, "source", 'required, a non-empty string (got " ")'),
        (3, "target", 'required, a non-empty string (got "")'),
        (4, "target", "required, a non-empty string"),
        (5, "target", "required, a non-empty string (got 3)"),
        (6, "label", "unknown field; allowed: source, target"),
    ]
    csv_issues = problems(b"source,target\na,b\n,c\nd\n", name="e.csv")
    assert csv_issues == [(3, "source", 'required, a non-empty string (got "")'),
                          (4, None, "expected 2 columns, got 1")]


def test_mixed_formats() -> None:
    issues = problems(jsonl(PAIRS[0], {"text": "a", "label": 1}, PAIRS[1],
                            {"prompt": "p", "completion": "c"}))
    assert [line for line, _, _ in issues] == [2, 4]
    assert issues[0][2] == ("mixed formats: this row is text (text and label), but the file "
                            f"began as {LAYOUT}; use one format per file")
    assert problems(jsonl({"text": "a", "label": 1}, PAIRS[0]))[0][2] == (
        f"mixed formats: this row is {LAYOUT}, but the file began as text (text and label); "
        "use one format per file")


@pytest.mark.parametrize(("data", "name", "task", "layout"), [
    (jsonl(*PAIRS), "f.jsonl", "text-classification", LAYOUT),
    (jsonl(*PAIRS), "f.jsonl", "chat", LAYOUT),
    (b"source,target\na,b\nc,d\n", "f.csv", "text-regression", LAYOUT),
    (jsonl({"text": "a", "label": 1}, {"text": "b", "label": 2}), "f.jsonl", "seq2seq",
     "text (text and label)"),
    (jsonl({"prompt": "p", "completion": "c"}), "f.jsonl", "seq2seq", "prompt/completion"),
])
def test_an_explicit_task_that_does_not_fit_names_both(data: bytes, name: str, task: str,
                                                       layout: str) -> None:
    (issue,) = problems(data, task, name=name)
    assert issue == (1, None, f"this row is {layout}, which does not fit the task {task} "
                              "that the file was given for")
