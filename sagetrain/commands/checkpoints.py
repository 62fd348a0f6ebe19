"""`sagetrain checkpoints`: list a job's checkpoints and download one as a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from sagetrain.commands.jobs import CONNECTION_HELP, add_connection_arguments, call, print_json

if TYPE_CHECKING:
    from sagetrain.client import Client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "List and download a job's checkpoints. " + CONNECTION_HELP
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list a job's checkpoints (JSON)",
                             description="List a job's checkpoints, newest first, as JSON.")
    listing.add_argument("job_id", metavar="JOB_ID")
    download = sub.add_parser("download", help="download and extract a checkpoint",
                              description="Download a checkpoint (default: the job's latest) "
                              "and extract it as a Hugging Face model folder under --output; "
                              "prints the folder's path.")
    download.add_argument("job_id", metavar="JOB_ID")
    download.add_argument("--checkpoint", metavar="ID", default=None,
                          help="checkpoint id (ftckpt-...; default: the latest)")
    download.add_argument("--output", metavar="DIR", type=Path, default=Path("."),
                          help="folder to extract into (default: the current folder)")
    download.add_argument("--variant", choices=("merged", "adapter"), default="merged",
                          help="merged (default): the whole model; adapter: a LoRA job's "
                          "peft adapter folder alone")
    add_connection_arguments(listing)
    add_connection_arguments(download)


def run(args: argparse.Namespace) -> int:
    def action(client: Client) -> int:
        if args.action == "list":
            return print_json(client.list_checkpoints(args.job_id))
        folder = client.download_checkpoint(args.job_id, args.checkpoint, dest=args.output,
                                            variant=args.variant)
        print(folder)
        return 0

    return call(args, action)
