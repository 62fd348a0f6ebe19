"""Reading and validating training files (JSONL, or CSV/TSV with a header).

Torch-free, so the API validates uploads with the very code the trainer reads them with.
Every problem names the file, the line (1-based, as an editor shows it) and the field.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sage_core.errors import DataFileError, DataIssue
from sage_core.names import DEFAULT_TASK

MIN_ROWS = 2
KNOWN_COLUMNS = ("text", "text_pair", "label")


@dataclass(frozen=True)
class Example:
    text: str
    label: str | int | float
    text_pair: str | None = None


@dataclass
class Dataset:
    examples: list[Example]
    format: str  # "jsonl" | "csv" | "tsv"
    columns: list[str] = field(default_factory=list)
    task: str = DEFAULT_TASK

    @property
    def has_pairs(self) -> bool:
        return any(e.text_pair is not None for e in self.examples)

    def label_names(self) -> list[str]:
        """Class names in a stable order: numeric order when every label is an int."""
        labels = {e.label for e in self.examples}
        if all(isinstance(x, int) for x in labels):
            return [str(x) for x in sorted(labels)]  # type: ignore[type-var]
        return sorted(str(x) for x in labels)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": len(self.examples), "columns": self.columns,
                               "format": self.format}
        if self.task == "text-regression":
            values = [float(e.label) for e in self.examples]
            out["label_min"], out["label_max"] = min(values), max(values)
            out["label_mean"] = sum(values) / len(values)
        else:
            out["label_counts"] = dict(sorted(Counter(str(e.label) for e in self.examples).items()))
        return out


def detect_format(filename: str, head: bytes) -> str:
    name = filename.lower()
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".tsv", "tsv")):
        if name.endswith(ext):
            return fmt
    return "jsonl" if head.lstrip()[:1] == b"{" else "csv"


def load_dataset(path: Path, task: str, *, filename: str | None = None,
                 max_rows: int | None = None) -> Dataset:
    """Read and validate the file at `path`; errors name it as `filename` (the user's name)."""
    return parse_dataset(Path(path).read_bytes(), filename or Path(path).name, task,
                         max_rows=max_rows)


def parse_dataset(data: bytes, filename: str, task: str, *, max_rows: int | None = None,
                  max_errors: int = 10) -> Dataset:
    fmt = detect_format(filename, data[:64])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataFileError(filename, [DataIssue(line, None, "not valid UTF-8")]) from None
    reader = _ValidatingReader(filename, task, max_rows, max_errors)
    if fmt == "jsonl":
        reader.read_jsonl(text)
    else:
        reader.read_csv(text, delimiter="\t" if fmt == "tsv" else ",")
    return reader.finish(fmt)


class _ValidatingReader:
    def __init__(self, filename: str, task: str, max_rows: int | None, max_errors: int):
        self.filename, self.task = filename, task
        self.max_rows, self.max_errors = max_rows, max_errors
        self.examples: list[Example] = []
        self.issues: list[DataIssue] = []
        self.columns: list[str] = []

    def _issue(self, line: int | None, fld: str | None, message: str) -> None:
        self.issues.append(DataIssue(line, fld, message))
        if len(self.issues) >= self.max_errors:
            raise DataFileError(self.filename, self.issues)

    def _too_many(self, line: int) -> bool:
        if self.max_rows is not None and len(self.examples) >= self.max_rows:
            self._issue(line, None, f"more than the limit of {self.max_rows} rows")
            raise DataFileError(self.filename, self.issues)
        return False

    def read_jsonl(self, text: str) -> None:
        for lineno, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            self._too_many(lineno)
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                self._issue(lineno, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                self._issue(lineno, None, f"expected a JSON object, got {type(row).__name__}")
                continue
            for key in row:
                if key not in self.columns:
                    self.columns.append(key)
            self._add(lineno, row)

    def read_csv(self, text: str, delimiter: str) -> None:
        rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            header = next(rows)
        except StopIteration:
            header = []
        except csv.Error as exc:
            self._issue(1, None, f"malformed CSV header ({exc})")
            return
        header = [h.strip() for h in header]
        self.columns = header
        missing = [c for c in ("text", "label") if c not in header]
        if missing:
            self._issue(1, None, "the header must name the columns 'text' and 'label' "
                                 f"(missing {', '.join(repr(m) for m in missing)}; got {header})")
            raise DataFileError(self.filename, self.issues)
        try:
            for values in rows:
                lineno = rows.line_num
                if not any(v.strip() for v in values):
                    continue
                self._too_many(lineno)
                if len(values) != len(header):
                    self._issue(lineno, None, f"expected {len(header)} columns, got {len(values)}")
                    continue
                self._add(lineno, dict(zip(header, values, strict=True)), from_csv=True)
        except csv.Error as exc:
            self._issue(rows.line_num, None, f"malformed CSV ({exc})")

    def _add(self, line: int, row: dict[str, Any], from_csv: bool = False) -> None:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            self._issue(line, "text", "required, a non-empty string"
                        + ("" if text is None else f" (got {json.dumps(text)[:40]})"))
            return
        pair = row.get("text_pair")
        if from_csv and pair == "":
            pair = None
        if pair is not None and not isinstance(pair, str):
            self._issue(line, "text_pair", f"must be a string, got {type(pair).__name__}")
            return
        label = self._label(line, row.get("label"), "label" in row, from_csv)
        if label is None:
            return
        self.examples.append(Example(text=text, label=label, text_pair=pair))

    def _label(self, line: int, value: Any, present: bool,
               from_csv: bool) -> str | int | float | None:
        if not present or value is None or value == "":
            self._issue(line, "label", "required")
            return None
        if self.task == "text-regression":
            try:
                if isinstance(value, bool):
                    raise ValueError
                number = float(value)
            except (TypeError, ValueError):
                self._issue(line, "label", f"must be a number for text-regression, got {value!r}")
                return None
            if not math.isfinite(number):
                self._issue(line, "label", f"must be finite, got {value!r}")
                return None
            return number
        if isinstance(value, bool) or not isinstance(value, str | int):
            self._issue(line, "label", "must be a string or an integer for text-classification, "
                                       f"got {json.dumps(value)[:40]}")
            return None
        return value.strip() if isinstance(value, str) else value

    def finish(self, fmt: str) -> Dataset:
        if self.issues:
            raise DataFileError(self.filename, self.issues)
        if len(self.examples) < MIN_ROWS:
            raise DataFileError(self.filename, [DataIssue(
                None, None, f"needs at least {MIN_ROWS} rows, found {len(self.examples)}")])
        if self.task == "text-classification":
            kinds = {type(e.label) for e in self.examples}
            if len(kinds) > 1:
                raise DataFileError(self.filename, [DataIssue(
                    None, "label", "labels mix strings and integers; use one kind")])
            if len({e.label for e in self.examples}) < 2:
                raise DataFileError(self.filename, [DataIssue(
                    None, "label", "text-classification needs at least 2 distinct labels")])
        return Dataset(examples=self.examples, format=fmt, columns=self.columns, task=self.task)
