"""`jobs list` and `files list` as tables: the columns, a sweep's children under their
parent, paging, and cells cut to readable widths (the fine-tuned model never)."""

from __future__ import annotations

import re
from typing import Any

from sagetrain.commands.files import files_table
from sagetrain.commands.jobs import jobs_table
from sagetrain.commands.tables import render, size, when

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
T0 = 1_796_000_000


def _job(job_id: str, created: int, status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    job = {"id": job_id, "status": status, "model": MINILM, "created_at": created,
           "progress": {"step": 30, "total_steps": 30, "epoch": 3.0}, "queue_position": None,
           "fine_tuned_model": None, "parent_job_id": None, "sweep": None}
    return job | extra


def _cells(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


def test_jobs_table_columns() -> None:
    name = f"ft:{MINILM}:demo:1k20abcdefghjkmnpqrstvwx"
    page = {"data": [
        _job("ftjob-b", T0 + 60, "queued", queue_position=2,
             progress={"step": 0, "total_steps": None, "epoch": 0.0}),
        _job("ftjob-a", T0, fine_tuned_model=name),
    ], "has_more": False}
    lines = jobs_table(page).splitlines()
    assert _cells(lines[0]) == ["id", "status", "model", "created", "steps",
                                "fine-tuned model"]
    assert _cells(lines[1]) == ["ftjob-b", "queued #2", MINILM, when(T0 + 60), "-", "-"]
    assert _cells(lines[2]) == ["ftjob-a", "succeeded", MINILM, when(T0), "30/30", name]
    assert len(lines) == 3
    # aligned: every column starts at the same place on each line
    assert {line.index(when(T0)[:4]) for line in lines[1:]} == {lines[0].index("created")}


def test_sweep_children_are_listed_under_their_parent_oldest_first() -> None:
    runs = [{"job_id": f"ftjob-c{i}", "optimizer": "sage", "learning_rate": 1e-4}
            for i in (1, 2)]
    page = {"data": [
        _job("ftjob-later", T0 + 90),
        _job("ftjob-c2", T0 + 2, "running", parent_job_id="ftjob-p",
             progress={"step": 5, "total_steps": 40, "epoch": 0.5}),
        _job("ftjob-c1", T0 + 1, parent_job_id="ftjob-p"),
        _job("ftjob-p", T0, "running", sweep={"runs": runs}),
    ], "has_more": False}
    ids = [_cells(line)[0] for line in jobs_table(page).splitlines()[1:]]
    assert ids == ["ftjob-later", "ftjob-p", "└ ftjob-c1", "└ ftjob-c2"]
    rows = {(_cells(line)[0]): _cells(line) for line in jobs_table(page).splitlines()[1:]}
    assert rows["ftjob-p"][4] == "2 runs" and rows["└ ftjob-c2"][4] == "5/40"


def test_children_whose_parent_is_on_another_page_name_it_and_paging() -> None:
    page = {"data": [_job("ftjob-c2", T0 + 2, parent_job_id="ftjob-p"),
                     _job("ftjob-c1", T0 + 1, parent_job_id="ftjob-p")], "has_more": True}
    lines = jobs_table(page).splitlines()
    assert [_cells(line)[0] for line in lines[1:3]] == ["└ ftjob-c2", "└ ftjob-c1"]
    assert lines[3] == "└ a sweep's child job; not on this page, its parent: ftjob-p"
    assert lines[4] == "more: --after ftjob-c1"


def test_a_long_base_model_is_cut_and_the_fine_tuned_model_is_not() -> None:
    long = "org/" + "x" * 60
    name = f"ft:{long}::1k20abcdefghjkmnpqrstvwx"
    line = jobs_table({"data": [_job("ftjob-a", T0, model=long, fine_tuned_model=name)]}
                      ).splitlines()[1]
    assert _cells(line)[2] == long[:39] + "…" and line.endswith(name)


def test_no_jobs_no_files() -> None:
    assert jobs_table({"data": []}) == "no jobs"
    assert files_table({"data": []}) == "no files"


def test_files_table() -> None:
    page = {"data": [
        {"id": "file-2", "filename": "chat.jsonl", "bytes": 20_480, "created_at": T0 + 5,
         "status": "processed", "stats": {"task": "chat", "examples": 12}},
        {"id": "file-1", "filename": "train.jsonl", "bytes": 812, "created_at": T0,
         "status": "processed", "stats": {"task": "text-classification", "rows": 100}},
    ], "has_more": True}
    lines = files_table(page).splitlines()
    assert _cells(lines[0]) == ["id", "file name", "task", "rows", "size", "created", "status"]
    assert _cells(lines[1]) == ["file-2", "chat.jsonl", "chat", "12", "20.0 KB", when(T0 + 5),
                                "processed"]
    assert _cells(lines[2]) == ["file-1", "train.jsonl", "text-classification", "100", "812 B",
                                when(T0), "processed"]
    assert lines[3] == "more: --after file-1"


def test_render_and_sizes() -> None:
    assert render(["a", "bb"], [["xxx", "y"], ["z", "long last"]]).splitlines() == [
        "a    bb", "xxx  y", "z    long last"]
    assert [size(n) for n in (0, 1023, 1024, 5 * 1024 ** 2, 3 * 1024 ** 4)] == [
        "0 B", "1023 B", "1.0 KB", "5.0 MB", "3072.0 GB"]
