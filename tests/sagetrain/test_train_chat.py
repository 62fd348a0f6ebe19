"""`sagetrain train` picks the task from the training file when --task is left out, so chat
and prompt/completion files train with no more options than a labelled text file."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sage_core.errors import InvalidSpecError
from sage_core.names import DEFAULT_BATCH_SIZE, DEFAULT_MAX_SEQ_LENGTH
from sage_core.settings import get_settings
from sage_core.testing import build_tiny_llama
from sagetrain import cli
from sagetrain.commands.train import detect_task

QUESTIONS = [("hello", "hi how are you"), ("how is the weather today", "it is sunny"),
             ("tell me a joke", "why did the chicken cross the road"),
             ("what is the capital of france", "paris"), ("thank you", "you are welcome")]


def chat_rows(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer = rng.choice(QUESTIONS)
        rows.append({"messages": [{"role": "system", "content": "you are a helpful bot"},
                                  {"role": "user", "content": question},
                                  {"role": "assistant", "content": answer}]})
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"chat": tmp_path / "chat.jsonl", "completion": tmp_path / "completion.jsonl",
             "text-classification": tmp_path / "text.jsonl"}
    paths["chat"].write_text(chat_rows(24))
    paths["completion"].write_text("".join(
        json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in QUESTIONS))
    paths["text-classification"].write_text("".join(
        json.dumps({"text": q, "label": str(i % 2)}) + "\n" for i, (q, _) in enumerate(QUESTIONS)))
    return paths


@pytest.fixture
def models(tmp_path_factory: pytest.TempPathFactory,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("models")
    build_tiny_llama(root / "tiny-llama", words=["welcome", "france"])
    monkeypatch.setenv("SAGETRAIN_MODELS_DIR", str(root))
    monkeypatch.delenv("SAGETRAIN_DEVICE", raising=False)
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


def test_detect_task_reads_the_layout(files: dict[str, Path]) -> None:
    for task, path in files.items():
        assert detect_task(path) == task


def test_task_left_out_is_detected_and_given_one_is_kept(
        files: dict[str, Path], models: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sage_core.training

    seen: list[Any] = []

    def fake_run_training(spec: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(spec)
        raise InvalidSpecError("stopped by the test")

    monkeypatch.setattr(sage_core.training, "run_training", fake_run_training)
    argv = ["train", "--model", "tiny-llama", "--output", str(tmp_path / "out"),
            "--no-progress", "--train-file"]
    assert cli.main([*argv, str(files["chat"])]) == 2
    assert "task: chat (from chat.jsonl's layout" in capsys.readouterr().out
    assert cli.main([*argv, str(files["completion"])]) == 2
    capsys.readouterr()
    assert cli.main([*argv, str(files["text-classification"]), "--task",
                     "text-regression"]) == 2
    assert "task:" not in capsys.readouterr().out
    assert [s.task for s in seen] == ["chat", "completion", "text-regression"]
    # the defaults follow the detected task, not text classification's
    assert seen[0].hyperparameters.batch_size == DEFAULT_BATCH_SIZE["chat"]
    assert seen[0].hyperparameters.max_seq_length == DEFAULT_MAX_SEQ_LENGTH["chat"]


def test_a_bad_file_fails_detection_with_its_line(
        models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(chat_rows(2) + '{"messages": []}\n')
    assert cli.main(["train", "--model", "tiny-llama", "--train-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sagetrain train: error: bad.jsonl: line 3") and "Traceback" not in err


def _chat_task_exists() -> bool:
    from sage_core.training.registry import TASKS

    return "chat" in TASKS


@pytest.mark.skipif(not _chat_task_exists(), reason="the chat task has not landed yet")
@pytest.mark.parametrize("lora", [False, True])
def test_train_a_chat_file_then_chat_with_the_model(
        files: dict[str, Path], models: Path, tmp_path: Path, lora: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    extra = ["--lora", '{"r": 4}'] if lora else []
    code = cli.main(["train", "--model", "tiny-llama", "--train-file", str(files["chat"]),
                     "--epochs", "1", "--batch-size", "4", "--learning-rate", "1e-3",
                     "--max-seq-length", "64", "--device", "cpu", "--output", str(out),
                     "--no-progress", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "task: chat" in captured.out and "status: completed at step 6/6" in captured.out
    assert (out / "final" / "config.json").is_file()
    assert cli.main(["chat", str(out / "final"), "--prompt", "hello",
                     "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
