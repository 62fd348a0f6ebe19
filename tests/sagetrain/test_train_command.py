"""`sagetrain train` through `sagetrain.cli.main`, on the tiny BERT."""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from sage_core.settings import get_settings

SPAM = ["free", "cash", "prize", "win", "claim", "urgent", "call", "now"]
HAM = ["hello", "see", "you", "later", "home", "good", "ok", "fine"]


@pytest.fixture
def cli(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    from sagetrain import cli as cli_module

    # Other subcommands are written separately; build the parser from those that exist.
    present = {name: entry for name, entry in cli_module.COMMANDS.items()
               if importlib.util.find_spec(f"sagetrain.commands.{entry[0]}") is not None}
    monkeypatch.setattr(cli_module, "COMMANDS", present)
    monkeypatch.setenv("SAGETRAIN_MODELS_DIR", str(models_dir))
    monkeypatch.delenv("SAGETRAIN_DEVICE", raising=False)
    get_settings.cache_clear()
    yield cli_module
    get_settings.cache_clear()


def _write(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        words = rng.sample(SPAM if i % 2 else HAM, 4)
        lines.append(json.dumps({"text": " ".join(words), "label": "spam" if i % 2 else "ham"}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    return _write(tmp_path / "train.jsonl", 64, 1), _write(tmp_path / "valid.jsonl", 16, 2)


def test_train_writes_metrics_and_final_model(
        cli: ModuleType, data: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    code = cli.main(["train", "--model", "tiny-bert", "--train-file", str(data[0]),
                     "--validation-file", str(data[1]), "--epochs", "2", "--batch-size", "8",
                     "--learning-rate", "3e-3", "--optimizer", "sage", "--beta3", "0.8",
                     "--max-seq-length", "32", "--seed", "3", "--device", "cpu",
                     "--eval-every-steps", "4", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"final model: {out / 'final'}" in captured.out
    assert "status: completed at step 16/16" in captured.out
    assert "samples/s" in captured.err and "loss" in captured.err  # the progress bar
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "valid_loss" in r] == [4, 8, 12, 16]
    spec = json.loads((out / "checkpoints/step-16/trainer_state.json").read_text())["spec"]
    assert spec["seed"] == 3 and spec["hyperparameters"]["beta3"] == 0.8
    assert spec["hyperparameters"]["max_seq_length"] == 32
    model = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert model.config.id2label == {0: "ham", 1: "spam"}

    # The same command again resumes from the last checkpoint, which is the end.
    assert cli.main(["train", "--model", "tiny-bert", "--train-file", str(data[0]),
                     "--validation-file", str(data[1]), "--epochs", "2", "--batch-size", "8",
                     "--learning-rate", "3e-3", "--optimizer", "sage", "--beta3", "0.8",
                     "--max-seq-length", "32", "--seed", "3", "--device", "cpu",
                     "--eval-every-steps", "4", "--output", str(out), "--no-progress"]) == 0
    assert "resumed from step 16" in capsys.readouterr().out


def test_two_processes(cli: ModuleType, data: tuple[Path, Path], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """--gpus 2 on a machine without GPUs: two gloo processes train the job."""
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "tiny-bert", "--train-file", str(data[0]),
                     "--validation-file", str(data[1]), "--epochs", "1", "--batch-size", "8",
                     "--max-seq-length", "32", "--device", "cpu", "--gpus", "2",
                     "--strategy", "ddp", "--output", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "status: completed at step 8/8" in captured.out
    spec = json.loads((out / "checkpoints/step-8/trainer_state.json").read_text())["spec"]
    assert spec["resources"] == {"gpus": 2, "strategy": "ddp"}
    assert (out / "final/model.safetensors").is_file()


def test_default_output_folder(cli: ModuleType, data: tuple[Path, Path], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--model", "tiny-bert", "--train-file", str(data[0]),
                     "--epochs", "1", "--batch-size", "16", "--no-progress"]) == 0
    (run,) = (tmp_path / "sagetrain-output").iterdir()
    assert run.name.startswith("tiny-bert-") and (run / "final/model.safetensors").is_file()
    assert "validation:" not in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "message"), [
    (["--epochs", "0"], "--epochs must be between 1 and 100, got 0"),
    (["--batch-size", "8", "--gradient-accumulation-steps", "3"],
     "batch_size (8) must be a multiple of gradient_accumulation_steps (3)"),
    (["--early-stopping-patience", "2"], "early_stopping_patience needs a validation_file"),
    (["--beta3", "1.5"], "--beta3: Input should be less than 1"),
    (["--gpus", "0"], "--gpus: Input should be greater than or equal to 1"),
    (["--gpus", "4", "--batch-size", "2"],
     "batch_size 2 is smaller than the 4 GPUs (processes) asked for"),
])
def test_bad_options_exit_2_with_a_clean_message(
        cli: ModuleType, data: tuple[Path, Path], tmp_path: Path, extra: list[str],
        message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["train", "--model", "tiny-bert", "--train-file", str(data[0]),
                     "--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("sagetrain train: error: ") and message in err
    assert "Traceback" not in err


def test_bad_data_and_unknown_model(cli: ModuleType, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": 3}\n')
    assert cli.main(["train", "--model", "tiny-bert", "--train-file", str(bad),
                     "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: line 3, field 'text'" in err and "Traceback" not in err

    assert cli.main(["train", "--model", "nope", "--train-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "tiny-bert" in err

    assert cli.main(["train", "--model", "tiny-bert", "--train-file",
                     str(tmp_path / "missing.jsonl")]) == 2
    assert "--train-file: no such file" in capsys.readouterr().err


def test_help_lists_the_options(cli: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--train-file", "--validation-file", "--task", "--optimizer",
                   "--epochs", "--batch-size", "--learning-rate", "--beta3", "--warmup-ratio",
                   "--max-seq-length", "--seed", "--eval-every-steps", "--device", "--output",
                   "--gradient-accumulation-steps", "--early-stopping-patience",
                   "--no-resume"):
        assert option in text


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(
        cli: ModuleType, data: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal

    from sage_core.training.loop import Trainer

    original = Trainer._train_step
    steps = iter(range(1, 1000))

    def interrupted_at_3(self: Trainer, indices: list[int]) -> None:
        original(self, indices)
        if next(steps) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "_train_step", interrupted_at_3)
    argv = ["train", "--model", "tiny-bert", "--train-file", str(data[0]), "--epochs", "1",
            "--batch-size", "8", "--output", str(tmp_path / "out"), "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "status: stopped at step 3/8" in out and "resume with the same command" in out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    monkeypatch.setattr(Trainer, "_train_step", original)
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "resumed from step 3" in out and "status: completed at step 8/8" in out


def test_auto_defaults_fit_the_file(cli: ModuleType, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """120 rows and no validation file: 12 held out, 108 left (4 steps of 32 an epoch: the
    10 epochs' cap); with a validation file, a split is refused."""
    train = _write(tmp_path / "train.jsonl", 120, 1)
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "tiny-bert", "--train-file", str(train),
                     "--max-seq-length", "16", "--device", "cpu", "--output", str(out),
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "validation_split 0.1: held out 12 of 120 examples of train.jsonl" in printed
    assert "status: completed at step 40/40 (epoch 10.00)" in printed
    assert "valid_f1_macro=" in printed
    assert json.loads((out / "final/validation_split.json").read_text())["count"] == 12

    valid = _write(tmp_path / "valid.jsonl", 8, 2)
    assert cli.main(["train", "--model", "tiny-bert", "--train-file", str(train),
                     "--validation-file", str(valid), "--validation-split", "0.2"]) == 2
    assert "validation_split holds out training rows" in capsys.readouterr().err
