"""`sagetrain files`: upload, list and delete training files on a sagetrain server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sage_core.names import DEFAULT_TASK, TASKS
from sagetrain.commands.jobs import CONNECTION_HELP, add_connection_arguments, call, print_json
from sagetrain.commands.tables import render, size, when

if TYPE_CHECKING:
    from sagetrain.client import Client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Upload, list and delete training and validation files. "
                          + CONNECTION_HELP)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    upload = sub.add_parser("upload", help="upload a file (prints it as JSON, with its id)",
                            description="Upload a training or validation file: JSONL, or "
                            "CSV/TSV with a header, of text rows (text, label, optional "
                            "text_pair); or JSONL of chat ({\"messages\": [...]}) or "
                            "prompt/completion rows. The server validates it; prints the file "
                            "as JSON, its task and statistics under stats.")
    upload.add_argument("file", metavar="FILE", type=Path)
    upload.add_argument("--task", choices=TASKS, default=None,
                        help="the task to validate the rows for (default: recognised from "
                        f"the rows: chat, completion, else {DEFAULT_TASK}; text-regression "
                        "must be named)")
    listing = sub.add_parser(
        "list", help="list your files, newest first, as a table",
        description="List your files, newest first, as a table: id, file name, task, rows "
        "(or examples), size, created (local time), status. --json prints the API's page "
        "as it came.")
    listing.add_argument("--limit", metavar="N", type=int, default=None,
                         help="at most N files (default: the server's, 20)")
    listing.add_argument("--after", metavar="ID", default=None,
                         help="start after this file id (paging)")
    listing.add_argument("--json", action="store_true", help="print the page as JSON")
    delete = sub.add_parser("delete", help="delete a file (prints the deletion as JSON)",
                            description="Delete one of your files. A file that a queued or "
                            "running job still trains on is refused (409).")
    delete.add_argument("file_id", metavar="FILE_ID")
    for action in (upload, listing, delete):
        add_connection_arguments(action)


FILENAME_WIDTH = 40


def files_table(page: dict[str, Any]) -> str:
    """A page of `GET /files` as a table, newest first."""
    files: list[dict[str, Any]] = page.get("data") or []
    if not files:
        return "no files"
    rows = []
    for f in files:
        stats = f.get("stats") or {}
        count = stats.get("rows", stats.get("examples"))
        rows.append([f["id"], f["filename"], stats.get("task") or "-",
                     "-" if count is None else str(count), size(f["bytes"]),
                     when(f.get("created_at")), f["status"]])
    header = ["id", "file name", "task", "rows", "size", "created", "status"]
    lines = [render(header, rows, {1: FILENAME_WIDTH})]
    if page.get("has_more"):
        lines.append(f"more: --after {files[-1]['id']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    def action(client: Client) -> int:
        if args.action == "upload":
            return print_json(client.upload_file(args.file, task=args.task))
        if args.action == "delete":
            return print_json(client.delete_file(args.file_id))
        page = client.list_files(after=args.after, limit=args.limit)
        if args.json:
            return print_json(page)
        print(files_table(page))
        return 0

    if args.action == "upload" and not args.file.is_file():
        print(f"error: no such file: {args.file}", file=sys.stderr)
        return 1
    return call(args, action)
