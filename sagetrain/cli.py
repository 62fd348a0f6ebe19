"""`sagetrain`: the one place that wires api/, worker/ and sage_core/ together.

Each subcommand lives in its own module under `sagetrain.commands` and is imported only
when it runs, so `sagetrain --help` is fast and `serve` never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module under sagetrain.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "fine-tune locally with no server"),
    "chat": ("chat", "chat with a causal language model folder"),
    "serve": ("serve", "run the HTTP API and a job executor"),
    "worker": ("worker", "run a Celery worker that trains queued jobs (distributed mode)"),
    "migrate": ("migrate", "apply database migrations"),
    "keys": ("keys", "manage API keys"),
    "files": ("files", "upload and list training files on a server"),
    "jobs": ("jobs", "create, control and watch fine-tuning jobs on a server"),
    "checkpoints": ("checkpoints", "list and download a job's checkpoints from a server"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sagetrain",
        description="Fine-tune Hugging Face Transformers with the SAGE optimizer, "
        "locally or as a service.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"sagetrain.commands.{module}")
        mod.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
            mod = importlib.import_module(f"sagetrain.commands.{COMMANDS[args.command][0]}")
            return int(mod.run(args) or 0)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        # The reader went away (`sagetrain ... | head`): stop quietly, as `cat` does. Point
        # stdout at /dev/null so that the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the shell's status for a command a pipe stopped


if __name__ == "__main__":
    sys.exit(main())
