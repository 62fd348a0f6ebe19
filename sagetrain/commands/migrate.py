"""`sagetrain migrate`: apply the database migrations (Alembic `upgrade head`) to the
server's database, found as `serve` finds it (see `sagetrain.commands.database`)."""

from __future__ import annotations

import argparse
import sys

from sagetrain.commands.database import add_database_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Apply the database migrations to the server's database: SAGETRAIN_DATABASE_URL "
        "(a database server: its schema is created if it has none), else SQLite in the data "
        "folder (--data-dir, SAGETRAIN_DATA_DIR, else ./sagetrain-data), which must exist "
        "unless --init is given. `sagetrain serve` migrates by itself.")
    parser.add_argument("--revision", default="head", help="target revision (default: head)")
    add_database_arguments(parser, init_help="create a new SQLite database if the data "
                           "folder has none")


def run(args: argparse.Namespace) -> int:
    from sage_core.db.migrate import upgrade
    from sagetrain.commands.database import (
        DatabaseNotFound,
        describe_database,
        require_database,
        settings_from_args,
        sqlite_path,
    )

    settings = settings_from_args(args)
    url = settings.resolved_database_url
    # A database server's database exists before its schema: creating that is this
    # command's work. A SQLite file is created only when asked.
    init = args.init or sqlite_path(url) is None
    try:
        require_database(settings, init=init)
    except DatabaseNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    upgrade(url, args.revision)
    print(f"database at revision {args.revision}: {describe_database(url)}")
    return 0
