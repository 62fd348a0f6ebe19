"""`sagetrain keys create --name NAME [--max-running-jobs N] [--max-storage SIZE]` (prints
the key as the last line), `keys list`, `keys revoke ID`, in the server's database (see
`sagetrain.commands.database`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from sagetrain.commands.database import add_database_arguments

if TYPE_CHECKING:
    from sage_core.db.models import ApiKey

WHERE = ("Works on the server's database, found as `sagetrain serve` finds it: "
         "SAGETRAIN_DATABASE_URL, else SQLite in the data folder (--data-dir, "
         "SAGETRAIN_DATA_DIR, else ./sagetrain-data in the current folder). Refuses a folder "
         "with no database unless --init is given.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Manage API keys. " + WHERE
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create an API key and print it (once)",
                            description="Create an API key and print it, once, as the last "
                            "line. " + WHERE)
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--max-running-jobs", type=_positive, metavar="N",
                        help="most jobs of this key queued or running at once (default: "
                        "SAGETRAIN_MAX_RUNNING_JOBS, unset: unlimited); more get 429")
    create.add_argument("--max-storage", type=_size, metavar="SIZE",
                        help="most bytes this key's files may take, as 10G, 500M or bytes "
                        "(default: SAGETRAIN_MAX_STORAGE_BYTES, unset: unlimited); an "
                        "upload past it gets 429")
    listing = sub.add_parser("list", help="list keys (never the keys themselves)",
                             description="List the keys: id, prefix, state, name. " + WHERE)
    revoke = sub.add_parser("revoke", help="revoke a key by its id",
                            description="Revoke a key by its id; the server refuses it from "
                            "the next request on. " + WHERE)
    revoke.add_argument("key_id")
    for action in (create, listing, revoke):
        add_database_arguments(action, init_help="create the database (a new, empty one) if "
                               "there is none where the settings point")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"Invalid count: {text!r} (a whole number from 1)")
    return value


def _size(text: str) -> int:
    from sage_core.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _limits(row: ApiKey) -> str:
    """The key's own quotas, as `keys create` takes them."""
    from sage_core.sizes import format_size

    jobs, storage = row.max_running_jobs, row.max_storage_bytes
    shown = [f"max-running-jobs={jobs}" if jobs is not None else "",
             f"max-storage={format_size(storage)}" if storage is not None else ""]
    return " ".join(s for s in shown if s) or "default limits"


def run(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from sage_core.db.keys import create_key
    from sage_core.db.migrate import upgrade
    from sage_core.db.models import ApiKey, utcnow
    from sage_core.db.session import make_engine, make_session_factory
    from sagetrain.commands.database import (
        DatabaseNotFound,
        require_database,
        settings_from_args,
    )

    try:
        url = require_database(settings_from_args(args), init=args.init)
    except DatabaseNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    upgrade(url)  # a database a server of an older version left works too
    engine = make_engine(url)
    try:
        with make_session_factory(engine).begin() as session:
            if args.keys_command == "create":
                row, key = create_key(session, args.name,
                                      max_running_jobs=args.max_running_jobs,
                                      max_storage_bytes=args.max_storage)
                print(f"Created API key {row.id} ({row.name}, {_limits(row)}). "
                      "It is shown only once:")
                print(key)
            elif args.keys_command == "list":
                for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
                    state = "revoked" if row.revoked_at else "active"
                    print(f"{row.id}\t{row.prefix}…\t{state}\t{row.name}\t{_limits(row)}")
            else:
                found = session.get(ApiKey, args.key_id)
                if found is None:
                    print(f"no such key: {args.key_id}")
                    return 1
                found.revoked_at = found.revoked_at or utcnow()
                print(f"revoked {found.id}")
    finally:
        engine.dispose()
    return 0
