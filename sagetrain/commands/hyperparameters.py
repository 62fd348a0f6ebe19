"""The hyperparameter options of `sagetrain train` and `sagetrain jobs create`, generated
from the job spec's pydantic model (`sage_core.schemas.Hyperparameters`): both commands
offer every hyperparameter the HTTP API takes, with its description, choices and default,
and a field added to the model is an option of both with no edit here.

A field's option is `--` and its name with dashes (`--beta3`, `--warmup-ratio`), except
OpenAI's `n_epochs`, which is `--epochs`. Where the field takes "auto" the option does too;
where it takes null and defaults to something else (`max_grad_norm`), `none` sends null.
A yes/no field takes `true` or `false`; a nested one (`lora`) takes its JSON object, or
`true` for its defaults.
"""

from __future__ import annotations

import argparse
import json
import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from sage_core.names import STRATEGIES
from sage_core.schemas import Hyperparameters

_FLAG_NAMES = {"n_epochs": "--epochs"}
_NONE = "none"  # on the command line: send null (unset options are simply not sent)


def flag(field: str) -> str:
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def flags() -> dict[str, str]:
    """Each hyperparameter field -> its option, for naming options in error messages."""
    return {name: flag(name) for name in Hyperparameters.model_fields}


def _members(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return list(get_args(annotation))
    return [annotation]


def _literals(members: list[Any]) -> list[str]:
    return [v for m in members if get_origin(m) is Literal for v in get_args(m)]


def _option(name: str, info: FieldInfo) -> dict[str, Any]:
    """argparse keywords for one field."""
    members = _members(info.annotation)
    literals = _literals(members)
    number = next((m for m in members if m in (int, float)), None)
    help_text = info.description or name
    nested = next((m for m in members if isinstance(m, type) and issubclass(m, BaseModel)),
                  None)
    if nested is not None:
        return {"type": _json_object, "metavar": "JSON|true",
                "help": f"{help_text}: a JSON object with "
                        + ", ".join(nested.model_fields) + ", or true for the defaults"}
    if bool in members:
        return {"type": _parser(_yes_no, literals), "metavar": "|".join(["true|false",
                                                                          *literals]),
                "help": help_text + ("" if info.default == "auto"
                                     else f" (default {info.default})")}
    if number is None:  # a pure Literal: a choice
        return {"choices": literals, "metavar": "{" + ",".join(literals) + "}",
                "help": f"{help_text} (default {info.default})"}
    accepts = list(literals)  # "auto"
    if type(None) in members and info.default is not None:
        accepts.append(_NONE)
    if info.default not in (None, "auto"):
        help_text += f" (default {info.default})"
    return {"type": _parser(number, accepts), "help": help_text,
            "metavar": "|".join(["N" if number is int else "X", *accepts])}


def _parser(number: Callable[[str], Any], words: list[str]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.lower() in words:
            return text.lower()
        try:
            return number(text)
        except ValueError:
            kind = "an integer" if number is int else "a number" if number is float \
                else "true or false"
            kinds = kind + "".join(f" or {w!r}" for w in words)
            raise argparse.ArgumentTypeError(f"{text!r} is not {kinds}") from None

    # argparse names the type in its messages
    parse.__name__ = getattr(number, "__name__", "value")
    return parse


def _yes_no(text: str) -> bool:
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in words:
        raise ValueError(text)
    return words[text.lower()]


def _json_object(text: str) -> dict[str, Any]:
    if text.lower() == "true":
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object or 'true'")
    return value


def add_hyperparameter_arguments(group: argparse._ActionsContainer) -> None:
    for name, info in Hyperparameters.model_fields.items():
        group.add_argument(flag(name), dest=name, default=None, **_option(name, info))


def add_resource_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument("--gpus", metavar="N", type=int, default=None,
                       help="GPUs for the job, one process each (on a machine without GPUs: "
                            "processes); default 1")
    group.add_argument("--strategy", choices=STRATEGIES, default=None,
                       help="with --gpus over 1: ddp (a replica per GPU), fsdp (sharded) or "
                            "auto (ddp unless the model and its optimizer state do not fit "
                            "one GPU; the default)")


def resources_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job's `resources` given on the command line (empty: the defaults)."""
    return {name: value for name in ("gpus", "strategy")
            if (value := getattr(args, name, None)) is not None}


def hyperparameters_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameters given on the command line (unset ones are left to the server's
    or the spec's defaults)."""
    given = {}
    for name in Hyperparameters.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            given[name] = None if value == _NONE else value
    return given
