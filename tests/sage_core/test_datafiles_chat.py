"""sage_core.datafiles on chat (OpenAI's messages format) and prompt/completion files: the
task recognised from the content, every problem named by line and field, the statistics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sage_core.datafiles import ChatExample, CompletionExample, parse_dataset
from sage_core.errors import DataFileError


def jsonl(*rows: Any) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n").encode()


def chat(*turns: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


HELLO = chat(("system", "You are terse."), ("user", "hi"), ("assistant", "hello"))
WEATHER = chat(("user", "weather?"), ("assistant", "sunny"), ("user", "and tomorrow?"),
               ("assistant", "rainy"))
PAIR = {"prompt": "2 + 2 =", "completion": " 4"}


def problems(data: bytes, task: str | None = None, name: str = "f.jsonl") -> list[tuple]:
    with pytest.raises(DataFileError) as info:
        parse_dataset(data, name, task)
    assert info.value.filename == name and info.value.param == "file"
    return [(e.line, e.field, e.message) for e in info.value.errors]


def test_chat_is_recognised_with_its_statistics() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    data = jsonl(HELLO, WEATHER, {**HELLO, "tools": [tool]})
    for task in (None, "chat"):
        dataset = parse_dataset(data, "train.jsonl", task)
        assert dataset.task == "chat" and dataset.format == "jsonl"
        assert all(isinstance(e, ChatExample) for e in dataset.examples)
    assert dataset.examples[2].tools == [tool] and dataset.examples[0].tools is None
    stats = dataset.stats()
    assert stats == {
        "examples": 3, "format": "jsonl", "messages": 10,
        "messages_per_example": {"min": 3, "mean": 3.3, "max": 4},
        "examples_with_tools": 1,
        "characters_per_example": {"min": 21, "mean": 24.3, "max": 31},  # 14+2+5, 8+5+13+5
    }


def test_completion_is_recognised_with_its_statistics() -> None:
    data = jsonl(PAIR, {"prompt": "", "completion": "free text"})  # an empty prompt is fine
    for task in (None, "completion"):
        dataset = parse_dataset(data, "c.jsonl", task)
        assert dataset.task == "completion"
    assert dataset.examples[0] == CompletionExample(prompt="2 + 2 =", completion=" 4")
    assert dataset.stats() == {"examples": 2, "format": "jsonl",
                               "characters_per_example": {"min": 9, "mean": 9.0, "max": 9}}
    assert "messages" not in dataset.stats()


def test_text_rows_still_default_to_classification() -> None:
    data = jsonl({"text": "a", "label": "x"}, {"text": "b", "label": "y"})
    assert parse_dataset(data, "t.jsonl", None).task == "text-classification"
    assert parse_dataset(b"text,label\na,1\nb,2\n", "t.csv", None).task == "text-classification"
    assert parse_dataset(b"text,label\na,1\nb,2\n", "t.csv",
                         "text-regression").task == "text-regression"


def test_tool_calls_and_weights_are_accepted() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    row = {"messages": [
        {"role": "user", "content": "what time is it?"},
        {"role": "assistant", "tool_calls": [call], "weight": 0},
        {"role": "tool", "tool_call_id": "c1", "content": "noon"},
        {"role": "assistant", "content": "noon", "weight": 1, "name": "bot"}],
        "parallel_tool_calls": False}
    dataset = parse_dataset(jsonl(row, HELLO), "t.jsonl", None)
    assert dataset.examples[0].messages[1]["weight"] == 0


@pytest.mark.parametrize(("row", "field", "words"), [
    (chat(("user", "hi"), ("robot", "beep")), "messages[1].role", "unknown role \"robot\""),
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]},
     "messages[0].role", "missing"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
     "messages[0].content", "missing"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
     "messages[0].content", "must be a string"),
    (chat(("user", "  "), ("assistant", "x")), "messages[0].content", "empty user message"),
    (chat(("system", "s"), ("user", "hi")), "messages", "no assistant message"),
    (chat(("assistant", "x"), ("user", "hi"), ("assistant", "y")), "messages[0].role",
     "must start with a system or user message"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "x", "weight": 0.5}]},
     "messages[1].weight", "must be 0 or 1, got 0.5"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "x", "weight": True}]},
     "messages[1].weight", "must be 0 or 1, got true"),
    ({"messages": [{"role": "user", "content": "hi", "weight": 1},
                   {"role": "assistant", "content": "x"}]},
     "messages[0].weight", "only assistant messages take a weight"),
    ({"messages": [{"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "x", "weight": 0}]},
     "messages", "every assistant message has weight 0"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": "hi"}, "messages", "non-empty list"),
    ({"messages": ["hi", {"role": "assistant", "content": "x"}]}, "messages[0]",
     "must be an object, got str"),
    ({**HELLO, "extra": 1}, "extra", "unknown field"),
    ({"messages": [{"role": "user", "content": "hi", "mood": "x"},
                   {"role": "assistant", "content": "x"}]}, "messages[0].mood", "unknown field"),
    ({**HELLO, "tools": {"f": 1}}, "tools", "list of tool definitions"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": []},
                   {"role": "assistant", "content": "x"}]},
     "messages[0].tool_calls", "only an assistant message has tool_calls"),
])
def test_each_chat_problem_names_line_and_field(row: dict, field: str, words: str) -> None:
    (issue,) = problems(jsonl(HELLO, row, WEATHER))
    assert issue[:2] == (2, field), issue
    assert words in issue[2], issue


@pytest.mark.parametrize(("row", "field", "words"), [
    ({"prompt": "p"}, "completion", "required, a string"),
    ({"completion": "c"}, "prompt", "required, a string"),
    ({"prompt": 1, "completion": "c"}, "prompt", "(got int)"),
    ({"prompt": "p", "completion": " "}, "completion", "empty: nothing to learn from"),
    ({**PAIR, "label": "x"}, "label", "unknown field"),
])
def test_each_completion_problem_names_line_and_field(row: dict, field: str,
                                                      words: str) -> None:
    (issue,) = problems(jsonl(PAIR, PAIR, row))
    assert issue[:2] == (3, field), issue
    assert words in issue[2], issue


def test_the_message_names_file_line_and_field() -> None:
    bad = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "x", "weight": 2}]}
    with pytest.raises(DataFileError) as info:
        parse_dataset(jsonl(HELLO, bad), "mine.jsonl", None)
    assert str(info.value) == ("mine.jsonl: line 2, field 'messages[1].weight': must be 0 or "
                               "1, got 2")


def test_every_bad_line_is_reported_one_problem_each() -> None:
    bad_role = chat(("user", "hi"), ("robot", "x"), ("robot", "y"))
    issues = problems(jsonl(HELLO, bad_role, "{oops", chat(("user", "hi")), WEATHER))
    assert [(line, field) for line, field, _ in issues] == [
        (2, "messages[1].role"), (3, None), (4, "messages")]
    assert "not valid JSON" in issues[1][2]


def test_blank_lines_keep_line_numbers() -> None:
    data = jsonl(HELLO, "", "   ", chat(("user", "hi")))
    assert problems(data)[0][:2] == (4, "messages")


@pytest.mark.parametrize(("rows", "first", "then"), [
    ((HELLO, PAIR), "chat (OpenAI's messages format)", "prompt/completion"),
    ((PAIR, HELLO), "prompt/completion", "chat (OpenAI's messages format)"),
    ((HELLO, {"text": "a", "label": "b"}), "chat (OpenAI's messages format)",
     "text (text and label)"),
    (({"text": "a", "label": "b"}, PAIR), "text (text and label)", "prompt/completion"),
])
def test_mixed_formats(rows: tuple, first: str, then: str) -> None:
    issues = problems(jsonl(*rows, *rows))
    assert [line for line, _, _ in issues] == [2, 4]
    assert issues[0][2] == (f"mixed formats: this row is {then}, but the file began as "
                            f"{first}; use one format per file")


@pytest.mark.parametrize(("rows", "task", "layout"), [
    ((HELLO, WEATHER), "text-classification", "chat (OpenAI's messages format)"),
    ((HELLO, WEATHER), "completion", "chat (OpenAI's messages format)"),
    ((PAIR, PAIR), "chat", "prompt/completion"),
    ((PAIR, PAIR), "text-regression", "prompt/completion"),
    (({"text": "a", "label": 1}, {"text": "b", "label": 2}), "chat", "text (text and label)"),
])
def test_an_explicit_task_that_does_not_fit_names_both(rows: tuple, task: str,
                                                       layout: str) -> None:
    (issue,) = problems(jsonl(*rows), task)
    assert issue == (1, None, f"this row is {layout}, which does not fit the task {task} "
                              "that the file was given for")


def test_generative_tasks_need_jsonl() -> None:
    (issue,) = problems(b"prompt,completion\na,b\nc,d\n", "completion", name="c.csv")
    assert "completion files are JSONL" in issue[2] and "CSV" in issue[2]


@pytest.mark.parametrize("task", [None, "chat", "completion"])
def test_empty_and_too_small(task: str | None) -> None:
    assert problems(b"\n\n", task)[0][2] == "empty: no examples"
    one = jsonl(HELLO) if task != "completion" else jsonl(PAIR)
    assert problems(one, task)[0][2] == "needs at least 2 rows, found 1"


def test_row_limit_applies_to_chat() -> None:
    with pytest.raises(DataFileError) as info:
        parse_dataset(jsonl(HELLO, HELLO, HELLO), "t.jsonl", None, max_rows=2)
    assert (info.value.errors[0].line, info.value.errors[0].message) == (
        3, "more than the limit of 2 rows")


def test_a_csv_of_prompts_is_told_to_use_jsonl() -> None:
    (issue,) = problems(b"prompt,completion\na,b\nc,d\n", None, name="c.csv")
    assert issue[0] == 1 and "prompt/completion files are JSONL" in issue[2]
