"""sagetrain/commands/hyperparameters.py: the CLI's hyperparameter options come from the
job spec's model, so `train` and `jobs create` offer every hyperparameter the API takes."""

from __future__ import annotations

import pytest

from sage_core.schemas import Hyperparameters
from sagetrain.cli import build_parser
from sagetrain.commands.hyperparameters import flag, hyperparameters_from_args

COMMANDS = (["train", "--model", "m", "--train-file", "t.jsonl"],
            ["jobs", "create", "--model", "m", "--training-file", "file-x"])


@pytest.mark.parametrize("command", COMMANDS, ids=["train", "jobs-create"])
def test_every_hyperparameter_is_an_option_that_reaches_the_spec(command: list[str]) -> None:
    argv = [*command, "--epochs", "auto", "--batch-size", "16", "--optimizer", "adamax-sage",
            "--learning-rate", "2e-4", "--beta3", "0.7", "--warmup-ratio", "0.2",
            "--weight-decay", "0", "--max-grad-norm", "none", "--max-seq-length", "64",
            "--gradient-accumulation-steps", "2", "--eval-every-steps", "5",
            "--checkpoint-every-steps", "10", "--early-stopping-patience", "3",
            "--sage-scope", "all", "--learning-rate-multiplier", "auto",
            "--train-on-inputs", "true", "--lora", '{"r": 4, "target_modules": ["q_proj"]}',
            "--gradient-checkpointing", "false", "--architecture", "encoder-decoder",
            "--num-beams", "3", "--augment", "false", "--validation-split", "0.2"]
    given = hyperparameters_from_args(build_parser().parse_args(argv))
    assert set(given) == set(Hyperparameters.model_fields)
    assert given["train_on_inputs"] is True and given["gradient_checkpointing"] is False
    assert given["lora"] == {"r": 4, "target_modules": ["q_proj"]}
    assert given["n_epochs"] == "auto" and given["batch_size"] == 16
    assert given["beta3"] == 0.7 and given["max_grad_norm"] is None
    assert given["early_stopping_patience"] == 3 and given["sage_scope"] == "all"
    assert given["validation_split"] == 0.2
    given.pop("learning_rate_multiplier")  # "auto", which learning_rate allows beside it
    assert (given["architecture"], given["num_beams"], given["augment"]) == (
        "encoder-decoder", 3, False)
    chat = {k: v for k, v in given.items() if k not in ("architecture", "num_beams", "augment")}
    spec = Hyperparameters.model_validate(chat).resolve("chat")
    assert (spec.optimizer, spec.learning_rate, spec.warmup_ratio) == ("adamax-sage", 2e-4, 0.2)
    assert spec.lora is not None and spec.lora.r == 4 and spec.lora.alpha == 16


@pytest.mark.parametrize("command", COMMANDS, ids=["train", "jobs-create"])
def test_unset_options_send_nothing(command: list[str]) -> None:
    assert hyperparameters_from_args(build_parser().parse_args(command)) == {}


@pytest.mark.parametrize(("option", "value"), [("--epochs", "two"), ("--beta3", "auto"),
                                                ("--optimizer", "sgd"),
                                                ("--learning-rate", "none")])
def test_a_value_the_field_cannot_take_is_an_argparse_error(
        option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*COMMANDS[1], option, value])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


def test_help_gives_each_default_once_from_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["jobs", "create", "--help"])
    text = capsys.readouterr().out
    for name, info in Hyperparameters.model_fields.items():
        assert flag(name) in text
        if info.default not in (None, "auto"):
            assert f"(default {info.default})" in " ".join(text.split())
