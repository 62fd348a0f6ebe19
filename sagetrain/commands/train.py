"""`sagetrain train`: fine-tune a model locally, with no server, database or queue.

The options build the same `JobSpec` the HTTP API accepts, so a spec that trains here is
valid there and the other way round. Ctrl-C stops after the current step and saves a
checkpoint; running the same command with the same --output resumes from it.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from sage_core.names import DEFAULT_TASK, TASKS
from sagetrain.commands.hyperparameters import (
    add_hyperparameter_arguments,
    add_resource_arguments,
    flags,
    hyperparameters_from_args,
    resources_from_args,
)

# JobSpec field -> the option that sets it, for error messages.
_FLAGS = {**flags(), "model": "--model", "task": "--task", "seed": "--seed",
          "validation_file": "--validation-file", "training_file": "--train-file",
          "gpus": "--gpus", "strategy": "--strategy"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Fine-tune a model locally with no server. Hyperparameters left out take the same "
        "defaults as the HTTP API's. Writes metrics.jsonl, checkpoints/ and final/ (a Hugging "
        "Face model folder) under --output. Ctrl-C saves a checkpoint and stops; the same "
        "command with the same --output resumes.")
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", metavar="NAME", required=True,
                      help="base model name from the catalog, e.g. "
                           "sentence-transformers/all-MiniLM-L6-v2 or a folder name under "
                           "SAGETRAIN_MODELS_DIR")
    data.add_argument("--train-file", metavar="FILE", required=True, type=Path,
                      help="training data: JSONL chat conversations (OpenAI's "
                           "{\"messages\": [...]}) or prompt/completion pairs; or JSONL, "
                           "CSV or TSV with a header, columns text, label, optional "
                           "text_pair")
    data.add_argument("--validation-file", metavar="FILE", type=Path, default=None,
                      help="validation data in the same format; enables evaluation")
    data.add_argument("--task", choices=TASKS, default=None,
                      help="what to train (default: what the training file holds: chat for "
                           "conversations, completion for prompt/completion pairs, else "
                           f"{DEFAULT_TASK}; text-regression is never guessed)")
    add_hyperparameter_arguments(
        parser.add_argument_group("hyperparameters (unset: the API's defaults)"))
    run = parser.add_argument_group("run")
    add_resource_arguments(run)
    run.add_argument("--seed", metavar="N", type=int, default=42,
                     help="seed for the head's initialisation, dropout and data order "
                          "(default 42)")
    run.add_argument("--device", metavar="DEVICE", default=None,
                     help="cpu, cuda or cuda:N (default: SAGETRAIN_DEVICE, else cuda if "
                          "available, else cpu)")
    run.add_argument("--output", metavar="DIR", type=Path, default=None,
                     help="output folder (default: ./sagetrain-output/<model>-<timestamp>); "
                          "an existing one with checkpoints is resumed")
    run.add_argument("--no-resume", dest="resume", action="store_false",
                     help="start over even if --output holds checkpoints (deletes them)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar (events and the summary are still printed)")


def build_spec(args: argparse.Namespace) -> Any:
    """The JobSpec these options describe (pydantic validates it as the API would)."""
    from sage_core.schemas import JobSpec

    return JobSpec.model_validate({"model": args.model, "task": args.task, "seed": args.seed,
                                   "hyperparameters": hyperparameters_from_args(args),
                                   "resources": resources_from_args(args)})


def detect_task(train_file: Path) -> str:
    """The task a training file's rows are laid out for (chat, completion, else text
    classification); raises DataFileError if the file is not valid for it."""
    from sage_core.datafiles import load_dataset

    return load_dataset(train_file, None).task


def count_rows(train_file: Path, task: str | None) -> int | None:
    """The training file's examples; None if it does not read (the engine says why, after
    checking the model, as the API would)."""
    from sage_core.datafiles import load_dataset
    from sage_core.errors import DataFileError

    try:
        return len(load_dataset(train_file, task).examples)
    except DataFileError:
        return None


def default_output(model: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-") or "model"
    return Path("sagetrain-output") / f"{safe}-{datetime.now():%Y%m%d-%H%M%S}"


def _validation_message(exc: Any) -> str:
    """pydantic's errors, with fields named by the options that set them."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"] if not str(x).startswith(("int", "float", "literal"))]
        field = loc[-1] if loc else ""
        message = str(err["msg"]).removeprefix("Value error, ")
        # A model-level check names its fields in the message instead of the location.
        for name, flag in _FLAGS.items():
            message = re.sub(rf"\b{name}\b", flag, message)
        where = _FLAGS.get(field)
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _fail(message: str) -> int:
    print(f"sagetrain train: error: {message}", file=sys.stderr)
    return 2


class _Progress:
    """A tqdm bar fed by metric rows; events and checkpoints print above it."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.postfix: dict[str, str] = {}

    def on_metrics(self, row: dict[str, Any]) -> None:
        from tqdm import tqdm

        if self.bar is None and self.enabled:
            # Starts at the row's step: the bar's rate then counts from this row, so its
            # first tick shows no rate instead of one step over a microsecond.
            self.bar = tqdm(total=row["total_steps"], unit="step", dynamic_ncols=True,
                            desc="training", initial=row["step"])
        if "train_loss" in row:
            self.postfix["loss"] = f"{row['train_loss']:.4f}"
            self.postfix["samples/s"] = f"{row['samples_per_second']:.1f}"
        for key in ("valid_loss", "valid_accuracy", "valid_spearman"):
            if key in row:
                self.postfix[key] = f"{row[key]:.4f}"
        if self.bar is not None:
            self.bar.update(row["step"] - self.bar.n)
            self.bar.set_postfix(self.postfix, refresh=True)

    def write(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line) if self.bar is not None else print(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sage_core.catalog import find_model
    from sage_core.errors import DataFileError, InvalidSpecError, SageTrainError, UnknownModelError
    from sage_core.schemas import check_resources
    from sage_core.settings import get_settings

    for flag, path in (("--train-file", args.train_file),
                       ("--validation-file", args.validation_file)):
        if path is not None and not path.is_file():
            return _fail(f"{flag}: no such file: {path}")
    settings = get_settings()
    if args.task is None:
        try:
            # the engine's order: an unknown model is told before a bad file
            find_model(args.model, models_dir=settings.models_dir,
                       allow_hub_models=settings.allow_hub_models)
            args.task = detect_task(args.train_file)
        except (UnknownModelError, DataFileError) as exc:
            return _fail(exc.message)
        print(f"task: {args.task} (from {args.train_file.name}'s layout; --task to choose)")
    try:
        request = build_spec(args)
        # n_epochs and validation_split "auto" fit the training file's size, as the API's do
        spec = request.resolve(train_rows=count_rows(args.train_file, args.task),
                               has_validation=args.validation_file is not None)
        check_resources(spec.resources, spec.hyperparameters)
    except ValidationError as exc:
        return _fail(_validation_message(exc))
    except InvalidSpecError as exc:
        return _fail(exc.message)
    if not settings.allow_hub_models:
        # The catalog serves local folders only; make sure nothing reaches for the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    output = args.output or default_output(spec.model)

    from sage_core.training import Callbacks, run_training

    progress = _Progress(args.progress)
    interrupted: list[bool] = []

    def on_interrupt(signum: int, frame: Any) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        progress.write("stopping after this step (Ctrl-C again to abort without saving)")

    callbacks = Callbacks(
        on_metrics=progress.on_metrics,
        on_event=lambda level, message, data: progress.write(
            message if level == "info" else f"{level}: {message}"),
        should_stop=lambda: bool(interrupted),
        on_checkpoint=lambda folder, step, metrics: None,
    )
    # Signal handlers can only be set from the main thread (not so when embedded).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if main_thread else None
    try:
        result = run_training(spec, args.train_file, output,
                              validation_file=args.validation_file, callbacks=callbacks,
                              models_dir=settings.models_dir,
                              allow_hub_models=settings.allow_hub_models,
                              device=args.device or settings.device, resume=args.resume)
    except (InvalidSpecError, DataFileError, UnknownModelError) as exc:
        progress.close()
        return _fail(exc.message)
    except SageTrainError as exc:
        progress.close()
        print(f"sagetrain train: training failed: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    progress.close()
    _print_summary(result, output)
    return 0


def _print_summary(result: Any, output: Path) -> None:
    # images have no tokens: their count would read as nothing trained
    tokens = f", {result.trained_tokens} tokens trained" if result.trained_tokens else ""
    print(f"status: {result.status} at step {result.step}/{result.total_steps} "
          f"(epoch {result.epoch:.2f}){tokens}")
    valid = {k: v for k, v in result.metrics.items() if not k.startswith("baseline_")}
    baseline = {k: v for k, v in result.metrics.items() if k.startswith("baseline_")}
    if valid:
        print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in valid.items()))
    if baseline:
        print("trivial baseline: " + ", ".join(f"{k}={v:.4f}" for k, v in baseline.items()))
    for warning in getattr(result, "warnings", None) or []:
        print(f"warning: {warning['code']}: {warning['message']}")
    print(f"metrics: {output / 'metrics.jsonl'}")
    if result.final_dir is not None:
        print(f"final model: {result.final_dir}")
    else:
        print(f"checkpoint saved; resume with the same command and --output {output}")
