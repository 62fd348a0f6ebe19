"""`sagetrain chat` through `sagetrain.cli.main`, on a tiny random Llama."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from sage_core.testing import build_tiny_llama, build_tiny_model
from sagetrain import cli
from sagetrain.commands.chat import Chat


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("chat") / "llama")


def _count_turns(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The roles of the conversation as each answer starts (its new user turn included)."""
    seen: list[list[str]] = []
    answer = Chat.answer

    def spy(self: Chat, text: str) -> str:
        seen.append([m["role"] for m in self.messages] + ["user"])
        return answer(self, text)

    monkeypatch.setattr(Chat, "answer", spy)
    return seen


def test_prompts_are_answered_in_one_conversation(
        llama: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    turns = _count_turns(monkeypatch)
    code = cli.main(["chat", str(llama), "--prompt", "hello", "--prompt", "how is the weather",
                     "--max-new-tokens", "6", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    answers = captured.out.splitlines()
    assert len(answers) == 2 and all(answers)
    assert turns == [["user"], ["user", "assistant", "user"]]
    assert "Traceback" not in captured.err


def test_greedy_answers_are_repeatable_and_stop_at_the_limit(llama: Path) -> None:
    from sagetrain.commands.chat import load_chat

    chat = load_chat(llama, system="you are a helpful bot", max_new_tokens=5, device="cpu")
    first = chat.answer("hello")
    assert len(chat.tokenizer(first, add_special_tokens=False)["input_ids"]) <= 5
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "you are a helpful bot"}]
    assert chat.answer("hello") == first
    # the folder's EOS (<|eot_id|>, Llama 3's end of turn) ends generation
    assert chat.generation.eos_token_id == [chat.tokenizer.convert_tokens_to_ids("<|eot_id|>")]


def test_repl_keeps_the_conversation_until_reset_and_quits_at_eof(
        llama: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    turns = _count_turns(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\nthanks\n/reset\nhello\n"))
    code = cli.main(["chat", str(llama), "--system", "you are a bot", "--max-new-tokens", "4",
                     "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    answers = captured.out.splitlines()
    assert len(answers) == 3 and answers[0] == answers[2]  # greedy, same conversation
    assert turns == [["system", "user"], ["system", "user", "assistant", "user"],
                     ["system", "user"]]


def test_repl_exit_stops_reading(llama: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\nnever answered\n"))
    assert cli.main(["chat", str(llama), "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_bad_folders_fail_with_a_message(llama: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bert = build_tiny_model(tmp_path / "bert")
    capsys.readouterr()  # its save's progress bar

    def fails(argv: list[str], message: str) -> None:
        assert cli.main(["chat", *argv, "--prompt", "hi"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sagetrain chat: error: ") and message in err, err
        assert "Traceback" not in err

    fails([str(tmp_path / "missing")], "no such folder")
    fails([str(tmp_path)], "not a Hugging Face model folder")
    fails([str(bert)], "is not a causal language model")
    fails([str(llama), "--raw", "--system", "x"], "--system needs a chat template")

    plain = tmp_path / "plain"
    plain.mkdir()
    for item in llama.iterdir():
        if item.name != "chat_template.jinja":
            (plain / item.name).write_bytes(item.read_bytes())
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    fails([str(plain)], "has no chat template")
    # --raw continues plain text instead
    assert cli.main(["chat", str(plain), "--raw", "--prompt", "hello",
                     "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()


def test_help_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["chat", "--help"])
    assert exit_info.value.code == 0
    text: Any = capsys.readouterr().out
    for option in ("FOLDER", "--prompt", "--system", "--max-new-tokens", "--temperature",
                   "--raw", "--device", "/reset", "/exit"):
        assert option in text
