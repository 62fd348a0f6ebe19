"""Reading and validating training files (JSONL, or CSV/TSV with a header).

Kinds of rows, one kind per file:
- text classification / regression: `{"text", "text_pair"?, "label"}` (JSONL or CSV/TSV);
- chat, OpenAI's format: `{"messages": [{"role", "content", "weight"?}, ...], "tools"?}`;
- completion: `{"prompt", "completion"}`;
- seq2seq: `{"source", "target"}` (JSONL, or CSV/TSV with those columns);
- image classification: `{"image": "data:image/png;base64,...", "label"}` (JSONL), or an
  archive of class folders (.zip, .tar, .tar.gz): image_files.py reads and checks images.
All but text are recognised from the content (`detect_task`); regression and classification
share a layout, so those two are told apart by the task the caller names.

Torch-free, so the API validates uploads with the very code the trainer reads them with.
Every problem names the file, the line (1-based, as an editor shows it) and the field.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sage_core import image_files
from sage_core.errors import DataFileError, DataIssue
from sage_core.image_files import ImageExample
from sage_core.names import DEFAULT_TASK, GENERATIVE_TASKS, TEXT_TASKS, TaskName

MIN_ROWS = 2
KNOWN_COLUMNS = ("text", "text_pair", "label")
# The largest finite float32: training computes in it, so a larger label would be inf there.
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Example:
    text: str
    label: str | int | float
    text_pair: str | None = None


@dataclass(frozen=True)
class ChatExample:
    """One conversation: messages as given (OpenAI's keys; `weight` 0 or 1 on assistant
    messages), and the tool definitions the conversation may call, if any."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None

    @property
    def characters(self) -> int:
        return sum(len(m.get("content") or "") for m in self.messages)


@dataclass(frozen=True)
class Seq2SeqExample:
    source: str
    target: str


@dataclass(frozen=True)
class CompletionExample:
    prompt: str
    completion: str

    @property
    def characters(self) -> int:
        return len(self.prompt) + len(self.completion)


AnyExample = Example | ChatExample | CompletionExample | Seq2SeqExample | ImageExample


@dataclass
class Dataset:
    examples: list[Any]  # one kind of AnyExample, as `task` says
    format: str  # "jsonl" | "csv" | "tsv" | "zip" | "tar"
    columns: list[str] = field(default_factory=list)
    task: str = DEFAULT_TASK
    # each example's 1-based line in the file (for CSV, the line its row ends on); empty
    # for archives
    lines: list[int] = field(default_factory=list)

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
        if self.task == "image-classification":
            return image_files.image_stats(self.examples, self.format)
        if self.task in GENERATIVE_TASKS:
            return self._generative_stats()
        if self.task == "seq2seq":
            return {"examples": len(self.examples), "format": self.format,
                    "source_characters": _spread([len(e.source) for e in self.examples]),
                    "target_characters": _spread([len(e.target) for e in self.examples])}
        out: dict[str, Any] = {"rows": len(self.examples), "columns": self.columns,
                               "format": self.format}
        if self.task == "text-regression":
            values = [float(e.label) for e in self.examples]
            out["label_min"], out["label_max"] = min(values), max(values)
            # Each term divided first: the sum of large finite labels can overflow to inf.
            out["label_mean"] = math.fsum(v / len(values) for v in values)
        else:
            out["label_counts"] = dict(sorted(Counter(str(e.label) for e in self.examples).items()))
        return out

    def _generative_stats(self) -> dict[str, Any]:
        """Examples and their sizes. Sizes are in characters: tokens depend on the model's
        tokenizer, which a file does not know; the job reports what its tokenizer truncated."""
        out: dict[str, Any] = {"examples": len(self.examples), "format": self.format}
        if self.task == "chat":
            counts = [len(e.messages) for e in self.examples]
            out["messages"] = sum(counts)
            out["messages_per_example"] = _spread(counts)
            out["examples_with_tools"] = sum(1 for e in self.examples if e.tools)
        out["characters_per_example"] = _spread([e.characters for e in self.examples])
        return out


def _spread(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "mean": round(sum(values) / len(values), 1),
            "max": max(values)}


def detect_task(row: dict[str, Any]) -> TaskName | None:
    """The task a JSON row's (or a CSV header's) layout belongs to: chat, completion,
    seq2seq, image-classification, or None (text rows, whose task, classification or
    regression, the caller names). An archive is image-classification (`parse_dataset`)."""
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "completion"
    if "source" in row or "target" in row:
        return "seq2seq"
    if "image" in row:
        return "image-classification"
    return None


def _layout_of(task: str) -> str | None:
    return None if task in TEXT_TASKS else task


def detect_format(filename: str, head: bytes) -> str:
    archive = image_files.archive_format(filename, head)
    if archive is not None:
        return archive
    name = filename.lower()
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".tsv", "tsv")):
        if name.endswith(ext):
            return fmt
    return "jsonl" if head.lstrip()[:1] == b"{" else "csv"


def load_dataset(path: Path, task: str | None, *, filename: str | None = None,
                 max_rows: int | None = None) -> Dataset:
    """Read and validate the file at `path`; errors name it as `filename` (the user's name)."""
    return parse_dataset(Path(path).read_bytes(), filename or Path(path).name, task,
                         max_rows=max_rows)


def parse_dataset(data: bytes, filename: str, task: str | None, *,
                  max_rows: int | None = None, max_errors: int = 10) -> Dataset:
    """Validate `data` as rows for `task`; with `task` None, for the task its rows' layout
    shows (chat, completion, else the default, text classification)."""
    fmt = detect_format(filename, data[:64])
    if fmt in image_files.ARCHIVE_FORMATS:
        if task not in (None, "image-classification"):
            raise DataFileError(filename, [DataIssue(
                None, None, f"an archive ({fmt}) holds image-classification data, which does "
                            f"not fit the task {task} that the file was given for")])
        examples = image_files.read_archive(data, filename, fmt, max_images=max_rows)
        return Dataset(examples=list(examples), format=fmt, columns=[],
                       task="image-classification")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataFileError(filename, [DataIssue(line, None, "not valid UTF-8")]) from None
    reader = _ValidatingReader(filename, task, max_rows, max_errors)
    if fmt == "jsonl":
        reader.read_jsonl(text)
    elif task in GENERATIVE_TASKS or task == "image-classification":  # JSON only
        raise DataFileError(filename, [DataIssue(
            None, None, f"{task} files are JSONL, one example per line; this file reads as "
                        f"{fmt.upper()}")])
    else:
        reader.read_csv(text, delimiter="\t" if fmt == "tsv" else ",")
    return reader.finish(fmt)


_LAYOUT_NAMES = {"chat": "chat (OpenAI's messages format)", "completion": "prompt/completion",
                 "seq2seq": "seq2seq (source and target)",
                 "image-classification": "image-classification (image and label)",
                 None: "text (text and label)"}
_CHAT_ROLES = ("system", "user", "assistant", "tool")
_CHAT_ROW_KEYS = ("messages", "tools", "parallel_tool_calls")
_MESSAGE_KEYS = ("role", "content", "weight", "name", "tool_calls", "tool_call_id")
_COMPLETION_KEYS = ("prompt", "completion")
_SEQ2SEQ_KEYS = ("source", "target")
_IMAGE_KEYS = ("image", "label")


class _ValidatingReader:
    def __init__(self, filename: str, task: str | None, max_rows: int | None,
                 max_errors: int):
        self.filename, self.requested = filename, task
        self.task: str = task or DEFAULT_TASK
        self.layout: str | None = None  # detect_task of the first row: the file's layout
        self.seen_first = False
        self.max_rows, self.max_errors = max_rows, max_errors
        self.examples: list[Any] = []
        self.issues: list[DataIssue] = []
        self.columns: list[str] = []
        self.lines: list[int] = []  # of the rows read; each becomes an example or an issue

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
            self.lines.append(lineno)
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                self._issue(lineno, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            except RecursionError:
                self._issue(lineno, None, "nested too deeply to read")
                continue
            except ValueError:  # an integer of more digits than int() converts
                self._issue(lineno, None, "a number of more than "
                            f"{sys.get_int_max_str_digits()} digits")
                continue
            if not isinstance(row, dict):
                self._issue(lineno, None, f"expected a JSON object, got {type(row).__name__}")
                continue
            if not self._same_layout(lineno, detect_task(row)):
                continue
            for key in row:
                if key not in self.columns:
                    self.columns.append(key)
            if self.layout == "chat":
                self._add_chat(lineno, row)
            elif self.layout == "completion":
                self._add_completion(lineno, row)
            elif self.layout == "seq2seq":
                self._add_seq2seq(lineno, row)
            elif self.layout == "image-classification":
                self._add_image(lineno, row)
            else:
                self._add(lineno, row)

    def _same_layout(self, line: int, layout: str | None) -> bool:
        """The first row fixes the file's layout (and, with no task requested, its task);
        a later row of another layout, or a first row that does not fit the requested
        task, is an issue."""
        if not self.seen_first:
            self.seen_first, self.layout = True, layout
            if self.requested is None:
                self.task = layout or DEFAULT_TASK
            elif layout != _layout_of(self.requested):
                self._issue(line, None, f"this row is {_LAYOUT_NAMES[layout]}, which does not "
                            f"fit the task {self.requested} that the file was given for")
                raise DataFileError(self.filename, self.issues)
            return True
        if layout != self.layout:
            self._issue(line, None, f"mixed formats: this row is {_LAYOUT_NAMES[layout]}, "
                        f"but the file began as {_LAYOUT_NAMES[self.layout]}; use one format "
                        "per file")
            return False
        return True

    def _unknown_keys(self, line: int, row: dict[str, Any], allowed: tuple[str, ...],
                      where: str = "") -> bool:
        unknown = [k for k in row if k not in allowed]
        if unknown:
            self._issue(line, f"{where}{unknown[0]}", "unknown field; allowed: "
                        + ", ".join(allowed))
        return bool(unknown)

    def _add_chat(self, line: int, row: dict[str, Any]) -> None:
        if self._unknown_keys(line, row, _CHAT_ROW_KEYS):
            return
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            self._issue(line, "messages", "must be a non-empty list of messages")
            return
        tools = row.get("tools")
        if tools is not None and not (isinstance(tools, list)
                                      and all(isinstance(t, dict) for t in tools)):
            self._issue(line, "tools", "must be a list of tool definitions (objects)")
            return
        issues = len(self.issues)
        for index, message in enumerate(messages):
            self._check_message(line, index, message)
            if len(self.issues) > issues:
                return  # one problem per line, the first
        roles = [m["role"] for m in messages]
        if "assistant" not in roles:
            self._issue(line, "messages", "no assistant message: nothing to learn from")
        elif roles[0] == "assistant":
            self._issue(line, "messages[0].role", "a conversation must start with a system "
                                                 "or user message, not an assistant one")
        elif all(m.get("weight", 1) == 0 for m in messages if m["role"] == "assistant"):
            self._issue(line, "messages", "every assistant message has weight 0: nothing to "
                                          "learn from")
        else:
            self.examples.append(ChatExample(messages=messages, tools=tools or None))

    def _check_message(self, line: int, index: int, message: Any) -> None:
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            self._issue(line, where, f"must be an object, got {type(message).__name__}")
            return
        if self._unknown_keys(line, message, _MESSAGE_KEYS, f"{where}."):
            return
        role = message.get("role")
        if role not in _CHAT_ROLES:
            self._issue(line, f"{where}.role", ("missing" if role is None else
                        f"unknown role {json.dumps(role)[:40]}") + "; use one of "
                        + ", ".join(_CHAT_ROLES))
            return
        content = message.get("content")
        calls = message.get("tool_calls")
        if calls is not None and (role != "assistant" or not isinstance(calls, list)):
            self._issue(line, f"{where}.tool_calls",
                        "only an assistant message has tool_calls, a list")
            return
        if content is None and calls is None:
            self._issue(line, f"{where}.content", "missing")
            return
        if content is not None and not isinstance(content, str):
            self._issue(line, f"{where}.content",
                        f"must be a string, got {type(content).__name__}")
            return
        if role != "assistant" and not (content or "").strip():
            self._issue(line, f"{where}.content", f"empty {role} message")
            return
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant":
                self._issue(line, f"{where}.weight",
                            "only assistant messages take a weight")
            elif isinstance(weight, bool) or weight not in (0, 1):
                self._issue(line, f"{where}.weight",
                            f"must be 0 or 1, got {json.dumps(weight)[:40]}")

    def _add_completion(self, line: int, row: dict[str, Any]) -> None:
        if self._unknown_keys(line, row, _COMPLETION_KEYS):
            return
        prompt, completion = row.get("prompt"), row.get("completion")
        for name, value in (("prompt", prompt), ("completion", completion)):
            if not isinstance(value, str):
                self._issue(line, name, "required, a string" + (
                    "" if value is None else f" (got {type(value).__name__})"))
                return
        assert isinstance(prompt, str) and isinstance(completion, str)
        if not completion.strip():
            self._issue(line, "completion", "empty: nothing to learn from")
            return
        self.examples.append(CompletionExample(prompt=prompt, completion=completion))

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
        if detect_task(dict.fromkeys(header)) == "seq2seq":
            self._same_layout(1, "seq2seq")
            self._read_csv_rows(rows, header, self._add_seq2seq)
            return
        missing = [c for c in ("text", "label") if c not in header]
        if missing and {"messages", "prompt", "completion"} & set(header):
            self._issue(1, None, "chat and prompt/completion files are JSONL, one example "
                                 f"per line; this file reads as CSV with the columns {header}")
            raise DataFileError(self.filename, self.issues)
        if missing:
            self._issue(1, None, "the header must name the columns 'text' and 'label' "
                                 f"(or 'source' and 'target' for seq2seq; missing "
                                 f"{', '.join(repr(m) for m in missing)}; got {header})")
            raise DataFileError(self.filename, self.issues)
        self._same_layout(1, None)
        self._read_csv_rows(rows, header, lambda line, row: self._add(line, row, from_csv=True))

    def _read_csv_rows(self, rows: Any, header: list[str],
                       add: Callable[[int, dict[str, Any]], None]) -> None:
        try:
            for values in rows:
                lineno = rows.line_num
                if not any(v.strip() for v in values):
                    continue
                self._too_many(lineno)
                self.lines.append(lineno)
                if len(values) != len(header):
                    self._issue(lineno, None, f"expected {len(header)} columns, got {len(values)}")
                    continue
                add(lineno, dict(zip(header, values, strict=True)))
        except csv.Error as exc:
            self._issue(rows.line_num, None, f"malformed CSV ({exc})")

    def _add_seq2seq(self, line: int, row: dict[str, Any]) -> None:
        if self._unknown_keys(line, row, _SEQ2SEQ_KEYS):
            return
        for name in _SEQ2SEQ_KEYS:
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                self._issue(line, name, "required, a non-empty string" + (
                    "" if value is None else f" (got {json.dumps(value)[:40]})"))
                return
        self.examples.append(Seq2SeqExample(source=row["source"], target=row["target"]))

    def _add_image(self, line: int, row: dict[str, Any]) -> None:
        if self._unknown_keys(line, row, _IMAGE_KEYS):
            return
        try:
            self.examples.append(image_files.image_from_data_url(row.get("image"),
                                                                 row.get("label")))
        except ValueError as exc:
            self._issue(line, "label" if "'label'" in str(exc) else "image", str(exc))

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
            if abs(number) > FLOAT32_MAX:
                self._issue(line, "label", f"{number:g} is out of range: training computes in "
                            f"float32, whose largest value is {FLOAT32_MAX:.4g}")
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
        if not self.examples:
            raise DataFileError(self.filename, [DataIssue(None, None, "empty: no examples")])
        if len(self.examples) < MIN_ROWS:
            raise DataFileError(self.filename, [DataIssue(
                None, None, f"needs at least {MIN_ROWS} rows, found {len(self.examples)}")])
        if self.task in ("text-classification", "image-classification"):
            kinds = {type(e.label) for e in self.examples}
            if len(kinds) > 1:
                raise DataFileError(self.filename, [DataIssue(
                    None, "label", "labels mix strings and integers; use one kind")])
            if len({e.label for e in self.examples}) < 2:
                raise DataFileError(self.filename, [DataIssue(
                    None, "label", f"{self.task} needs at least 2 distinct labels")])
        return Dataset(examples=self.examples, format=fmt, columns=self.columns, task=self.task,
                       lines=self.lines if len(self.lines) == len(self.examples) else [])
